"""``caslab nlb ...``: a thin client of the SDN NLB's admin API (HTTP + JSON on loopback).

With ``--port`` it talks to that API straight away (a run's controller, with the run's
token). Without it, it asks the live lab (``caslab up``) through its control socket, which
calls the API with its own token and records the command as an event.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request

MEMBER_ACTIONS = ("drain", "rejoin", "down", "up")


class UsageError(ValueError):
    """The command line does not name what the action needs."""


def call(port: int, path: str, body: dict | None = None, token: str | None = None) -> dict:
    url = f"http://127.0.0.1:{port}{path}"
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=data, method="GET" if body is None else "POST", headers=headers)
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


def request_for(action: str, vip: str | None, member_or_value: str | None,
                deadline: float | None) -> tuple[str, dict | None]:
    """(path, body) of one admin action; body None means a GET."""
    if action == "show":
        return "/nlb", None
    if action == "affinity":
        if not vip or not member_or_value:
            raise UsageError("usage: caslab nlb affinity VIP none|single|network")
        return f"/nlb/{vip}/affinity", {"affinity": member_or_value}
    if action not in MEMBER_ACTIONS or not vip or not member_or_value:
        raise UsageError("usage: caslab nlb drain|rejoin|down|up VIP MEMBER")
    body = {"deadline_s": deadline} if deadline is not None else {}
    return f"/nlb/{vip}/members/{member_or_value}/{action}", body


def run(args) -> int:
    if args.port is None:
        from caslab import live_control

        return live_control.nlb_command(args)
    try:
        path, body = request_for(args.action, args.vip, args.member_or_value, args.deadline)
        result = call(args.port, path, body, args.token)
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
