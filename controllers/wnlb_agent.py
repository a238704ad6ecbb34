"""The Windows NLB driver of one CAS, emulated in its host: heartbeats, convergence, filter.

Started in every CAS of a site before the Exchange roles (``caslab.modes.wnlb``), it
does what installing NLB on the host does, then runs the cluster protocol:

* NIC: unicast mode replaces the NIC's MAC with the cluster MAC 02-BF-<VIP> and masks
  the source MAC of everything the host sends (02-<host id>-<VIP>); multicast mode keeps
  the NIC's MAC and adds the group MAC 03-BF-<VIP>. The VIP is added to the NIC and ARP
  announces use the dedicated address (``arp_announce = 2``), as NLB's do.
* Filter: ``controllers/wnlb_nft.py`` (the bucket sets are rewritten at each convergence
  in one nft transaction).
* Heartbeats: one Ethernet frame of type 0x886F per period on a raw AF_PACKET socket, to
  the broadcast address (unicast mode) or the cluster MAC (multicast), as KB 232711
  describes; the payload is this host's state as JSON. ``controllers/wnlb_membership.py``
  decides membership and convergence from them.
* Connections: each period the agent reads this namespace's ``/proc/net/tcp`` and puts
  each established connection to the VIP in its bucket (the same hash as the filter), so
  it can keep serving the buckets it loses (``held``) and count what a convergence broke.
* Admin: ``drainstop`` (no new connections, existing ones finish; after ``deadline_s`` the
  rest are cut), ``start``, on a Unix datagram socket (JSON), as ``nlb drainstop`` / ``nlb
  start`` on the host would.

Config keys: name, host_id, vip, interface, mode, heartbeat_ms, missed, stable, affinity,
track_connections, control, events.
"""

from __future__ import annotations

import ipaddress
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from typing import Any

from controllers import wnlb_nft
from controllers.wnlb_logic import ETHERTYPE, bucket_of, cluster_mac, masked_mac
from controllers.wnlb_membership import Change, Membership, decode, encode
from labcommon.catalogue import LB_MEMBER, WNLB_CONVERGED, WNLB_CONVERGING, WNLB_DRAIN, WNLB_UP
from labcommon.protocol import nesting_depth
from labcommon.programs import WNLB_AGENT, WnlbAgentConfig
from labcommon.runtime import load_config, open_log

BROADCAST = b"\xff" * 6
MAX_DEADLINE_S = 86_400.0  # a drain deadline beyond a day is no deadline
TCP_ESTABLISHED = "01"


def mac_bytes(mac: str) -> bytes:
    return bytes(int(part, 16) for part in mac.split(":"))


def nft(text: str) -> None:
    """Apply a ruleset in one transaction (argument list; the text is nft's, not a shell's)."""
    result = subprocess.run(["nft", "-f", "-"], input=text.encode(), capture_output=True, timeout=10)
    if result.returncode != 0:
        raise RuntimeError(f"nft refused a ruleset: {result.stderr.decode(errors='replace')[:300]}")


def ip_cmd(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


def set_sysctl(path: str, value: str) -> None:
    with open(f"/proc/sys/net/ipv4/conf/{path}", "w") as handle:
        handle.write(value)


def established(vip: str, affinity: str) -> dict[int, int]:
    """Bucket -> established TCP connections to the VIP in this namespace."""
    packed = ipaddress.IPv4Address(vip).packed
    out: dict[int, int] = {}
    try:
        with open("/proc/net/tcp") as handle:
            lines = handle.readlines()[1:]
    except OSError:
        return out
    for line in lines:
        fields = line.split()
        if len(fields) < 4 or fields[3] != TCP_ESTABLISHED:
            continue
        local_ip, _ = fields[1].split(":")
        if bytes.fromhex(local_ip)[::-1 if sys.byteorder == "little" else 1] != packed:
            continue
        remote_ip, remote_port = fields[2].split(":")
        ip = str(ipaddress.IPv4Address(bytes.fromhex(remote_ip)[::-1 if sys.byteorder == "little" else 1]))
        bucket = bucket_of(affinity, ip, int(remote_port, 16))
        out[bucket] = out.get(bucket, 0) + 1
    return out


class Agent:
    def __init__(self, config: WnlbAgentConfig):
        self.config = config
        self.vip, self.iface, self.mode = config.vip, config.interface, config.mode
        self.affinity, self.track = config.affinity, config.track_connections
        self.period_ns = config.heartbeat_ms * 1_000_000
        self.cluster_mac = cluster_mac(self.vip, self.mode)
        self.log = open_log(config, config.name)
        self.membership = Membership(config.host_id, config.host, self.vip, config.missed, config.stable)
        self.owned: set[int] = set()
        self.held: set[int] = set()
        self.dirty: set[int] = set()
        self.conns: dict[int, int] = {}
        self.deadline_ns: int | None = None
        self.drained = False

    # ---- set-up --------------------------------------------------------------------

    def install(self) -> None:
        """What installing NLB on the host does to its NIC, then the filter (owning nothing)."""
        host_id = self.config.host_id
        # the mask first, the cluster MAC after: a frame that left with the cluster MAC as
        # its source (an IPv6 router solicitation, an ARP reply) would teach the switch that
        # the cluster MAC lives on this host's port, and every client's frame would then go
        # to this host alone until the entry aged out (300 s)
        nft(wnlb_nft.nic_table(self.iface, self.mode, self.cluster_mac, masked_mac(host_id, self.vip)))
        if self.mode == "unicast":
            ip_cmd("link", "set", "dev", self.iface, "address", self.cluster_mac)
        else:
            ip_cmd("maddr", "add", self.cluster_mac, "dev", self.iface)
            nft(wnlb_nft.arp_table(self.vip, self.cluster_mac))
        for conf in ("all", self.iface):
            set_sysctl(f"{conf}/arp_announce", "2")
        nft(wnlb_nft.filter_table(self.vip, self.affinity))
        ip_cmd("addr", "add", f"{self.vip}/32", "dev", self.iface)
        self.source_mac = mac_bytes(masked_mac(host_id, self.vip)) if self.mode == "unicast" else \
            mac_bytes(open(f"/sys/class/net/{self.iface}/address").read().strip())
        self.destination = BROADCAST if self.mode == "unicast" else mac_bytes(self.cluster_mac)
        self.log.emit(WNLB_UP, vip=self.vip, host_id=host_id, mode=self.mode, cluster_mac=self.cluster_mac,
                      interface=self.iface, heartbeat_ms=self.config.heartbeat_ms, missed=self.config.missed,
                      affinity=self.affinity)

    # ---- the loop ------------------------------------------------------------------

    def run(self, stop: list[bool]) -> None:
        raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETHERTYPE))
        raw.bind((self.iface, ETHERTYPE))
        control = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if os.path.exists(self.config.control):
            os.unlink(self.config.control)
        control.bind(self.config.control)
        next_tick = time.monotonic_ns()
        try:
            while not stop[0]:
                timeout = max(0.0, (next_tick - time.monotonic_ns()) / 1e9)
                readable, _, _ = select.select([raw, control], [], [], timeout)
                if raw in readable:
                    self.on_frame(raw.recv(2048))
                if control in readable:
                    self.on_command(control.recv(4096))
                now = time.monotonic_ns()
                if now >= next_tick:
                    self.tick(now)
                    self.send(raw)
                    next_tick += self.period_ns
                    if next_tick < now:  # a stall (SIGSTOP): resume the schedule from now
                        next_tick = now + self.period_ns
        finally:
            raw.close()
            control.close()
            self.log.close()

    def send(self, raw: socket.socket) -> None:
        payload = encode(self.membership.heartbeat())
        frame = self.destination + self.source_mac + ETHERTYPE.to_bytes(2, "big") + payload
        raw.send(frame.ljust(60, b"\0"))

    def on_frame(self, frame: bytes) -> None:
        if len(frame) < 15 or int.from_bytes(frame[12:14], "big") != ETHERTYPE:
            return
        heartbeat = decode(frame[14:])
        if heartbeat is None:
            return
        for change in self.membership.receive(heartbeat):
            self.on_change(change)
        self.update_dirty()

    def on_command(self, data: bytes) -> None:
        """An admin command: a flat JSON object; anything else (deep, not finite, not an
        object) is ignored, never fatal."""
        try:
            text = data.decode()
            if nesting_depth(text) > 1:
                return
            command = json.loads(text, parse_constant=lambda name: None)
        except (ValueError, RecursionError):
            return
        if not isinstance(command, dict):
            return
        now = time.monotonic_ns()
        if command.get("cmd") == "drainstop":
            deadline = command.get("deadline_s")
            finite = isinstance(deadline, (int, float)) and not isinstance(deadline, bool) and \
                0 <= deadline <= MAX_DEADLINE_S
            self.deadline_ns = now + int(deadline * 1e9) if finite else None
            self.membership.draining, self.drained = True, False
            self.member_event(self.config.host, "drainstop", alive=True, accepts_new=False, draining=True)
            self.log.emit(WNLB_DRAIN, vip=self.vip, state="draining", conns=sum(self.conns.values()))
        elif command.get("cmd") == "start":
            self.deadline_ns = None
            self.membership.draining = False
            self.member_event(self.config.host, "start", alive=True, accepts_new=True, draining=False)
            self.log.emit(WNLB_DRAIN, vip=self.vip, state="started", conns=sum(self.conns.values()))

    def tick(self, now: int) -> None:
        self.conns = established(self.vip, self.affinity)
        self.expire_held(now)
        self.membership.conns = sum(self.conns.values())
        self.membership.busy = sorted(b for b in self.owned | self.held if self.conns.get(b))
        for change in self.membership.tick(now):
            self.on_change(change)
        self.update_dirty()

    # ---- decisions -----------------------------------------------------------------

    def expire_held(self, now: int) -> None:
        """Held buckets whose connections are gone are released; a drain's deadline cuts
        the rest; a drained host says so once."""
        before = set(self.held)
        if self.deadline_ns is not None and now >= self.deadline_ns:
            cut = sum(self.conns.get(b, 0) for b in self.held)
            self.held.clear()
            self.deadline_ns = None
            self.log.emit(WNLB_DRAIN, vip=self.vip, state="deadline", conns=cut)
        self.held = {b for b in self.held if self.conns.get(b)}
        if self.held != before:
            self.apply()
        if self.membership.draining and not self.owned and not self.held and not self.drained \
                and self.membership.state == "converged":
            self.drained = True
            self.log.emit(WNLB_DRAIN, vip=self.vip, state="drained", conns=sum(self.conns.values()))

    def dirty_now(self) -> set[int]:
        """Owned buckets in which a live peer still serves connections."""
        others: set[int] = set()
        for peer in self.membership.peers.values():
            if peer.alive:
                others.update(peer.busy)
        return self.owned & others

    def update_dirty(self) -> None:
        dirty = self.dirty_now()
        if dirty != self.dirty:
            self.dirty = dirty
            self.apply()

    def apply(self) -> None:
        nft(wnlb_nft.sets_update(self.owned, self.held, self.dirty))

    def member_event(self, member: str, reason: str, **state: Any) -> None:
        self.log.emit(LB_MEMBER, member=member, reason=reason, vip=self.vip, **state)

    def on_change(self, change: Change) -> None:
        d = change.detail
        if change.kind == "member_down":
            self.member_event(d["member"], f"missed_heartbeats:{d['missed']}", alive=False, accepts_new=False)
        elif change.kind == "member_up":
            self.member_event(d["member"], "heartbeat", alive=True, accepts_new=True)
        elif change.kind == "converging":
            self.log.emit(WNLB_CONVERGING, vip=self.vip, view=d["view"], reason=d["reason"], restart=d["restart"],
                          restarts=d["restarts"])
        elif change.kind == "converged":
            self.converged(d)

    def converged(self, d: dict[str, Any]) -> None:
        lost, gained = set(d["lost"]), set(d["gained"])
        keep = self.track or self.membership.draining
        kept = {b for b in lost if self.conns.get(b)} if keep else set()
        broken = sum(self.conns.get(b, 0) for b in lost - kept)
        self.owned = set(d["owned"])
        self.held = (self.held | kept) - gained
        self.dirty = self.dirty_now()
        self.apply()
        self.log.emit(WNLB_CONVERGED, vip=self.vip, view=d["view"], members=d["members"], buckets=d["buckets"],
                      owned=sorted(self.owned), moved=d["moved"], gained=sorted(gained), lost=sorted(lost),
                      took_ms=d["took_ms"], restarts=d["restarts"], departed=d["departed"], broken=broken,
                      kept=sum(self.conns.get(b, 0) for b in kept))


def main(argv: list[str] | None = None) -> None:
    config = load_config(WNLB_AGENT, argv)
    stop = [False]

    def on_signal(_signum, _frame):
        stop[0] = True
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    agent = Agent(config)
    agent.install()
    agent.run(stop)


if __name__ == "__main__":
    main()
