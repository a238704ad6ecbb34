"""``caslab nlb ...``: a thin client of the SDN NLB's admin API (HTTP + JSON on loopback)."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request


def call(port: int, path: str, body: dict | None = None, token: str | None = None) -> dict:
    url = f"http://127.0.0.1:{port}{path}"
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=data, method="GET" if body is None else "POST", headers=headers)
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


def run(args) -> int:
    try:
        if args.action == "show":
            result = call(args.port, "/nlb", token=args.token)
        elif args.action == "affinity":
            result = call(args.port, f"/nlb/{args.vip}/affinity", {"affinity": args.member_or_value}, args.token)
        else:
            if not args.vip or not args.member_or_value:
                print("caslab nlb: usage: caslab nlb --port P drain|rejoin|down|up VIP MEMBER", file=sys.stderr)
                return 2
            body = {"deadline_s": args.deadline} if args.deadline is not None else {}
            result = call(args.port, f"/nlb/{args.vip}/members/{args.member_or_value}/{args.action}", body, args.token)
    except urllib.error.HTTPError as exc:
        print(f"caslab nlb: {exc.code}: {exc.read().decode(errors='replace')}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"caslab nlb: cannot reach the NLB API on 127.0.0.1:{args.port}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2, sort_keys=True))
    return 0
