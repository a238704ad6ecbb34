"""``caslab nlb ...``: a thin client of the SDN NLB's admin API (HTTP + JSON on loopback).

With ``--port`` it talks to that API straight away (a run's controller), with the run's
token from ``--token-file`` (a 0600 file: ``caslab up`` prints its path) or
``CASLAB_NLB_TOKEN``; never from the command line, where ``ps`` shows it to every user.
Without ``--port`` it asks the live lab (``caslab up``) through its control socket, which
calls the API with its own token and records the command as an event.

The request never goes through a proxy (urllib honours ``http_proxy`` even for
127.0.0.1, and would hand the bearer token to whoever runs the proxy), and every part of
the path a user typed is quoted.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import urllib.error
import urllib.parse
import urllib.request

MEMBER_ACTIONS = ("drain", "rejoin", "down", "up")


class UsageError(ValueError):
    """The command line does not name what the action needs."""


_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # no proxy, whatever the environment says


def call(port: int, path: str, body: dict | None = None, token: str | None = None) -> dict:
    url = f"http://127.0.0.1:{port}{path}"
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=data, method="GET" if body is None else "POST", headers=headers)
    with _DIRECT.open(request, timeout=5) as response:
        return json.loads(response.read())


def request_for(action: str, vip: str | None, member_or_value: str | None,
                deadline: float | None) -> tuple[str, dict | None]:
    """(path, body) of one admin action; body None means a GET."""
    if action == "show":
        return "/nlb", None
    if action == "affinity":
        if not vip or not member_or_value:
            raise UsageError("usage: caslab nlb affinity VIP none|single|network")
        return f"/nlb/{_part(vip)}/affinity", {"affinity": member_or_value}
    if action not in MEMBER_ACTIONS or not vip or not member_or_value:
        raise UsageError("usage: caslab nlb drain|rejoin|down|up VIP MEMBER")
    body = {"deadline_s": deadline} if deadline is not None else {}
    return f"/nlb/{_part(vip)}/members/{_part(member_or_value)}/{action}", body


def _part(text: str) -> str:
    """One path segment, quoted: a '/', '?' or '#' a user typed stays inside it."""
    return urllib.parse.quote(str(text), safe="")


def read_token(path: str | None) -> str | None:
    """The token from a private file (UsageError if others may read it), else from
    ``CASLAB_NLB_TOKEN``."""
    if not path:
        return os.environ.get("CASLAB_NLB_TOKEN") or None
    try:
        with open(path, encoding="utf-8") as handle:
            mode = stat.S_IMODE(os.fstat(handle.fileno()).st_mode)
            if mode & 0o077:
                raise UsageError(f"{path}: mode {mode:04o}, others may read it; a token file must be 0600")
            return handle.read().strip() or None
    except OSError as exc:
        raise UsageError(f"{path}: {exc.strerror}") from None


def run(args) -> int:
    """``caslab nlb --port``: straight to a controller's API (without --port, the command
    goes through the live lab: caslab.commands.cli)."""
    try:
        path, body = request_for(args.action, args.vip, args.member_or_value, args.deadline)
        result = call(args.port, path, body, read_token(args.token_file))
    except UsageError as exc:
        print(f"caslab nlb: {exc}", file=sys.stderr)
        return 2
    except urllib.error.HTTPError as exc:
        print(f"caslab nlb: {exc.code}: {exc.read().decode(errors='replace')}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"caslab nlb: cannot reach the NLB API on 127.0.0.1:{args.port}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2, sort_keys=True))
    return 0
