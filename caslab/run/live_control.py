"""The live lab's control channel: how ``caslab fault``, ``caslab nlb`` and ``caslab down``
in a second shell reach a lab that ``caslab up`` keeps running.

The lab listens on a Unix socket in its registry folder (``/run/caslab/labs/<id>/
control.sock``, mode 0600: only root, which runs the lab, may talk to it) and records
its path in ``lab.json``, so a client finds it the way ``caslab cleanup`` finds a lab.
One request per connection: a JSON object on one line, answered by one JSON line. The
lab validates and carries out each request itself (``caslab.run.live``); nothing received
is ever handed to a shell.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
from pathlib import Path
from typing import Any, Callable

from caslab.network.registry import running_live_lab
from labcommon.protocol import MAX_DEPTH, nesting_depth

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

MAX_REQUEST = 65536
Handler = Callable[[dict[str, Any]], dict[str, Any]]


class ControlServer(threading.Thread):
    """Serves requests one at a time (faults never overlap) until ``close``."""

    def __init__(self, path: Path, handler: Handler):
        super().__init__(daemon=True, name="live-control")
        self.path, self.handler = Path(path), handler
        self.path.unlink(missing_ok=True)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            self.sock.bind(str(self.path))
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        self.sock.listen(4)
        self.closed = threading.Event()

    def run(self) -> None:
        while not self.closed.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(10)
                reply = self.answer(conn)
                try:
                    conn.sendall((json.dumps(reply) + "\n").encode())
                except OSError:
                    continue

    def answer(self, conn: socket.socket) -> dict[str, Any]:
        """The reply to one request; nothing a request holds ends this thread (deep
        nesting, bytes that are not UTF-8, a bug in the handler), or ``caslab down``
        would wait for an answer that never comes."""
        try:
            text = read_line(conn).decode("utf-8")
            if nesting_depth(text) > MAX_DEPTH:
                raise ValueError(f"JSON nests deeper than {MAX_DEPTH}")
            request = json.loads(text)
        except (OSError, ValueError, RecursionError) as exc:
            return {"ok": False, "error": f"bad request: {str(exc)[:200]}"}
        if not isinstance(request, dict):
            return {"ok": False, "error": "bad request: a JSON object"}
        try:
            return self.handler(request)
        except Exception as exc:  # noqa: BLE001 - refused, and the next request is served
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}

    def close(self) -> None:
        self.closed.set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self.path.unlink(missing_ok=True)


def read_line(conn: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
        if len(data) > MAX_REQUEST:
            raise ValueError(f"request over {MAX_REQUEST} bytes")
    return data


class NoLiveLab(RuntimeError):
    """No ``caslab up`` is running on this machine (or this user may not reach it)."""


def send(request: dict[str, Any], timeout_s: float = 120) -> dict[str, Any]:
    """One request to the running live lab; its answer."""
    found = running_live_lab()
    if found is None:
        raise NoLiveLab("no live lab is running on this machine (start one with: caslab up)")
    path = found[1]["live"]["control"]
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        try:
            sock.connect(path)
        except PermissionError:
            raise NoLiveLab(f"{path}: permission denied (the live lab runs as root: use root or sudo)") from None
        sock.sendall((json.dumps(request) + "\n").encode())
        sock.shutdown(socket.SHUT_WR)
        answer = read_line(sock)
    if not answer:
        raise NoLiveLab("the live lab closed the connection without an answer (is it shutting down?)")
    return json.loads(answer)


def parse_value(text: str) -> Any:
    """A ``--key value`` value: a TOML value (5, 2.5, true, ["a"]), else the bare word."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def fault_request(words: list[str]) -> dict[str, Any]:
    """``KIND [TARGET[,TARGET]...] [--key value]...`` -> a fault request (ValueError if malformed)."""
    if not words:
        raise ValueError("usage: caslab fault KIND [TARGET ...] [--key value ...]")
    kind, targets, params = words[0], [], {}
    rest = iter(words[1:])
    for word in rest:
        if word.startswith("--"):
            key = word[2:].replace("-", "_")
            if "=" in key:
                key, _, value = key.partition("=")
            else:
                value = next(rest, None)
                if value is None:
                    raise ValueError(f"--{key} needs a value")
            params[key] = parse_value(value)
        else:
            targets += [t for t in word.split(",") if t]
    return {"op": "fault", "kind": kind, "target": targets, "params": params}


def _report(reply: dict[str, Any]) -> int:
    if reply.get("ok"):
        print(reply.get("answer", "done"))
        return 0
    print(f"caslab: the live lab refused: {reply.get('error')}", file=sys.stderr)
    return 1


def _call(request: dict[str, Any]) -> int:
    try:
        return _report(send(request))
    except NoLiveLab as exc:
        print(f"caslab: {exc}", file=sys.stderr)
        return 3
    except (OSError, ValueError) as exc:
        print(f"caslab: the live lab did not answer: {exc}", file=sys.stderr)
        return 1


def fault_command(words: list[str]) -> int:
    """``caslab fault ...``."""
    try:
        request = fault_request(words)
    except ValueError as exc:
        print(f"caslab fault: {exc}", file=sys.stderr)
        return 2
    return _call(request)


def nlb_command(args) -> int:
    """``caslab nlb ...`` without --port: through the live lab."""
    return _call({"op": "nlb", "action": args.action, "vip": args.vip, "value": args.member_or_value,
                  "deadline": args.deadline})


def down_command() -> int:
    """``caslab down``: the live lab tears itself down, as on SIGTERM."""
    return _call({"op": "stop"})
