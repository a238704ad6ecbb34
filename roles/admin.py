"""One admin call to a role service, run inside a lab host by the runner.

The runner lives in the root namespace and cannot reach the lab's addresses, so admin
actions (the DAG's Active Manager moving a database) run this inside a host:

    python -m roles.admin 10.1.0.22:7001 '{"op": "activate", "db": "DB1"}'

Prints the reply as JSON; exit status 1 if the service could not be reached.
"""

from __future__ import annotations

import asyncio
import json
import sys

from labcommon.protocol import FramedLink


async def call(address: str, message: dict) -> dict:
    return await FramedLink(address, 2.0).call(message)


def main() -> None:
    address, payload = sys.argv[1], json.loads(sys.argv[2])
    try:
        reply = asyncio.run(call(address, payload))
    except (OSError, asyncio.TimeoutError, ConnectionError) as exc:
        print(json.dumps({"ok": False, "error": type(exc).__name__}))
        sys.exit(1)
    print(json.dumps(reply))


if __name__ == "__main__":
    main()
