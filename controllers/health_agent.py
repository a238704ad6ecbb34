"""Active health probes for the SDN NLB, run in the load-balancer host (``lb1``).

The controller lives in the root namespace and cannot open TCP connections into the lab,
so this agent does it from inside: every ``interval_ms`` it sends each member an
application-level hello (an RPC ping frame) on a connection it keeps open (a new one after
any failure), so probing 16 CAS ten times a second costs frames, not handshakes. A frozen
CAS (SIGSTOP) never answers the hello, and a crashed one resets the connection or refuses
the next, so both are caught. Each result goes to the controller as one JSON datagram on a Unix
socket (path sockets cross network namespaces); the controller counts fall/rise.

Checks (config ``check``): ``app`` (connect + hello, the default), ``tcp`` (connect only,
like HAProxy's default check), ``icmp`` (host answers ping: Windows NLB's heartbeat comes
from the host's NLB driver, so it knows nothing of the service).

Config keys: vip, members [{name, ip}], port, interval_ms, timeout_ms, check, socket, events.
"""

from __future__ import annotations

import asyncio
import json
import socket

from labcommon.catalogue import PROBE_STATE, SERVICE_UP
from labcommon.programs import HEALTH_AGENT, HealthAgentConfig, HealthMember
from labcommon.protocol import FramedLink, read_frame, write_frame
from labcommon.runtime import load_config, open_log, run_forever


async def probe_icmp(ip: str, timeout_s: float) -> tuple[bool, str]:
    proc = await asyncio.create_subprocess_exec(
        "ping", "-c", "1", "-n", "-q", "-W", f"{timeout_s:.3f}", ip,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    return (await proc.wait() == 0), "no_echo"


async def probe(ip: str, port: int, timeout_s: float, check: str = "app",
                link: FramedLink | None = None) -> tuple[bool, str]:
    """One probe. ``app`` checks go over ``link`` (kept open between probes) when given."""
    if check == "icmp":
        return await probe_icmp(ip, timeout_s)
    if check == "app" and link is not None:
        try:
            reply = await link.call({"op": "ping"}, timeout_s)
        except asyncio.TimeoutError:
            return False, "timeout"
        except Exception as exc:  # noqa: BLE001 - refused, reset, a malformed reply: a failed probe
            return False, type(exc).__name__
        return (True, "") if reply.get("ok") else (False, "bad_reply")
    writer = None
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(ip, port), timeout_s)
        if check == "tcp":
            return True, ""
        await write_frame(writer, {"op": "ping"})
        reply = await asyncio.wait_for(read_frame(reader), timeout_s)
        return (True, "") if reply and reply.get("ok") else (False, "bad_reply")
    except asyncio.TimeoutError:
        return False, "timeout"
    except OSError as exc:
        return False, type(exc).__name__
    except Exception as exc:  # noqa: BLE001 - a malformed reply is a failed probe
        return False, type(exc).__name__
    finally:
        if writer is not None:
            writer.close()


async def probe_loop(config: HealthAgentConfig, member: HealthMember, sock: socket.socket, log) -> None:
    interval = config.interval_ms / 1000
    timeout = config.timeout_ms / 1000
    last = None
    loop = asyncio.get_running_loop()
    next_at = loop.time()
    link = FramedLink(f"{member.ip}:{config.port}", timeout)
    while True:
        ok, detail = await probe(member.ip, config.port, timeout, config.check, link)
        report = {"vip": config.vip, "member": member.name, "ok": ok, "detail": detail}
        try:
            sock.sendto(json.dumps(report).encode(), config.socket)
        except OSError:
            pass
        if ok != last:
            log.emit(PROBE_STATE, member=member.name, ok=ok, detail=detail)
            last = ok
        next_at = max(next_at + interval, loop.time())
        await asyncio.sleep(next_at - loop.time())


async def serve(config: HealthAgentConfig) -> None:
    log = open_log(config, "health")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.setblocking(False)
    log.emit(SERVICE_UP, role="health", members=[m.name for m in config.members])
    await asyncio.gather(*(probe_loop(config, m, sock, log) for m in config.members))


def main() -> None:
    config = load_config(HEALTH_AGENT)
    run_forever(lambda: serve(config))


if __name__ == "__main__":
    main()
