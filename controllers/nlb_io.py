"""The SDN NLB's I/O apart from OpenFlow, behind two small interfaces the app uses (the
core, controllers/nlb_core.py, never does I/O):

* ``AdminState``: what an admin set on members, in a JSON file replaced atomically after
  each change, so a restarted controller keeps it (the core says what to save: SaveAdmin).
* ``ConntrackReader`` (``OvsConntrack``): the switch's conntrack, read from ovs-vswitchd
  over its own control socket (``unixctl``: what ``ovs-appctl`` does, without starting a
  process), with ``ovs-appctl`` as the fallback.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from controllers.nlb_state import CtEntry, parse_conntrack

OVS_RUNDIR = Path(os.environ.get("OVS_RUNDIR", "/var/run/openvswitch"))


# ---------------------------------------------------------------- admin state across restarts

@dataclass
class AdminState:
    """What an admin set on members, saved atomically after each change."""

    path: Path | None
    members: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # vip -> member -> state

    @classmethod
    def load(cls, path: str | None) -> "AdminState":
        state = cls(Path(path) if path else None)
        if state.path and state.path.exists():
            try:
                data = json.loads(state.path.read_text())
                if isinstance(data, dict):
                    state.members = {str(v): {str(m): s for m, s in ms.items() if isinstance(s, dict)}
                                     for v, ms in data.items() if isinstance(ms, dict)}
            except (OSError, ValueError):
                pass
        return state

    def get(self, vip: str, member: str) -> dict[str, Any]:
        return self.members.get(vip, {}).get(member, {})

    def set(self, vip: str, member: str, **values: Any) -> None:
        self.members.setdefault(vip, {}).setdefault(member, {}).update(values)
        self.save()

    def save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".nlb-state-")
        try:
            with os.fdopen(fd, "w") as handle:
                json.dump(self.members, handle, sort_keys=True)
            os.replace(tmp, self.path)
        except BaseException:
            os.unlink(tmp)
            raise



class ConntrackReader(Protocol):
    """How the app reads (and empties) one conntrack zone of the switch."""

    def dump(self, zone: int) -> list[CtEntry]: ...

    def flush(self, zone: int) -> None: ...


@dataclass
class OvsConntrack:
    """The conntrack of Open vSwitch's datapath ``datapath`` (None: its only one)."""

    datapath: str | None = None

    def dump(self, zone: int) -> list[CtEntry]:
        return dump_conntrack(zone, self.datapath)

    def flush(self, zone: int) -> None:
        flush_conntrack(zone, self.datapath)


def unixctl(command: str, *args: str, timeout_s: float = 5) -> str:
    """One command to ovs-vswitchd over its own control socket (what ovs-appctl does,
    without starting a process: a conntrack dump at failover is then ~1 ms, not ~20)."""
    pid = (OVS_RUNDIR / "ovs-vswitchd.pid").read_text().strip()
    request = json.dumps({"method": command, "params": list(args), "id": 0}).encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        sock.connect(str(OVS_RUNDIR / f"ovs-vswitchd.{pid}.ctl"))
        sock.sendall(request)
        decoder, buffer = json.JSONDecoder(), ""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                raise OSError("ovs-vswitchd closed the control socket")
            buffer += chunk.decode()
            try:
                reply, _ = decoder.raw_decode(buffer)
                break
            except ValueError:
                continue
    if reply.get("error"):
        raise OSError(str(reply["error"]))
    return reply.get("result") or ""


def _dpctl(command: str, datapath: str | None, zone: int) -> list[str]:
    return [f"dpctl/{command}"] + ([datapath] if datapath else []) + [f"zone={zone}"]


def dump_conntrack(zone: int, datapath: str | None = None, timeout_s: float = 5) -> list[CtEntry]:
    """The datapath's connections in one zone (the controller runs in the root namespace)."""
    argv = _dpctl("dump-conntrack", datapath, zone)
    try:
        return parse_conntrack(unixctl(*argv, timeout_s=timeout_s))
    except (OSError, ValueError):
        pass
    try:
        res = subprocess.run(["ovs-appctl"] + argv, capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return parse_conntrack(res.stdout)


def flush_conntrack(zone: int, datapath: str | None = None) -> None:
    subprocess.run(["ovs-appctl"] + _dpctl("flush-conntrack", datapath, zone), capture_output=True, timeout=5,
                   check=False)


