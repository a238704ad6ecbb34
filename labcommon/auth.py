"""The lab directory's credentials: one rule the CAS checks and the clients use.

A real directory would hold a secret per user; the lab derives it from the user name, so
every host can authenticate without a shared store and a test can compute it too.
"""


def password_for(user: str) -> str:
    """Every user's password in the lab directory."""
    return f"pw-{user}"
