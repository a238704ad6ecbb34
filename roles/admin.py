"""One admin call to a role service, run inside a lab host by the runner.

The runner lives in the root namespace and cannot reach the lab's addresses, and a
role serves admin requests on its host's loopback only, so admin actions (the DAG's
Active Manager moving a database, a changed RpcClientAccessServer) run this inside the
role's own host, as an argument list (no shell):

    python -m roles.admin 127.0.0.1:7010 '{"op": "activate", "db": "DB1"}' [TIMEOUT_S]

Prints the reply as JSON; exit status 1 if the service could not be reached.
"""

from __future__ import annotations

import asyncio
import json
import sys

from labcommon.protocol import FramedLink


async def call(address: str, message: dict, timeout_s: float = 2.0) -> dict:
    return await FramedLink(address, timeout_s).call(message)


def main() -> None:
    address, payload = sys.argv[1], json.loads(sys.argv[2])
    timeout_s = float(sys.argv[3]) if len(sys.argv) > 3 else 2.0
    try:
        reply = asyncio.run(call(address, payload, timeout_s))
    except (OSError, asyncio.TimeoutError, ConnectionError) as exc:
        print(json.dumps({"ok": False, "error": type(exc).__name__}))
        sys.exit(1)
    print(json.dumps(reply))


if __name__ == "__main__":
    main()
