"""SYN prober: can a *new* client reach the service right now? (docs/ARCHITECTURE.md, "Metrics")

Client sessions only tell how established connections fare; a SYN probe asks the
question a fresh Outlook start asks: does a connection attempt to the VIP (or a CAS)
get a SYN-ACK? It runs inside a client host as ``python -m traffic.prober CONFIG.json``
and logs one ``probe`` event per SYN, so ``probe gap`` (the longest run of failed
probes) comes from the event log like every other metric.

How, and why this way (scapy as its authors advise):

* one raw IPv4 socket (``IPPROTO_RAW``) is opened once and reused for every SYN: the
  kernel routes and resolves ARP, scapy only builds the bytes;
* replies are read by one ``AsyncSniffer`` with a BPF ``filter=`` (only segments from
  target:port to our source-port range reach Python), started before the first probe
  (``started_callback``);
* a reply matches a probe on (sport, dport, ack == isn + 1): SYN-ACK means up, RST
  means refused (``ok`` false at once), nothing within ``timeout_ms`` means down;
* no half-open connections pile up: the probing host's kernel has no socket for the
  SYN-ACK, so it answers it with a RST by itself (verified on loopback by
  tests/test_prober.py, which sees one RST per SYN-ACK and no SYN-RECV entry at the
  listener). ``send_rst: true`` also sends an explicit RST, for a host whose firewall
  drops the kernel's;
* source ports cycle through ``sport_range`` (default 10000-29999), below Linux's
  ephemeral range (32768-60999), so a probe never shares a 4-tuple with one of the
  client emulator's real connections to the same VIP:port.

Config keys (``labcommon.programs.ProberConfig``): name, target_ip, port, rate_hz, events, and optional
duration_s (default: until SIGTERM/SIGINT), iface (where replies are sniffed; default:
the interface of the route to target_ip), timeout_ms (200), sport_range ([10000, 29999]),
send_rst (false), source_ip (default: the kernel's choice for target_ip).

Events (``ts`` is the CLOCK_MONOTONIC send time of the probe, as for every lab event):
``probe_up`` once before the first SYN; ``probe`` per SYN with ``seq`` (probe counter
from 0), ``sport``, ``isn``, ``ok``, ``result`` (synack / rst / timeout / error, the
send itself failed, e.g. no route) and ``rtt_us`` when a reply came; ``probe_down`` at
exit with the counts.
"""

from __future__ import annotations

import random
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from scapy.config import conf
from scapy.layers.inet import IP, TCP
from scapy.packet import raw
from scapy.sendrecv import AsyncSniffer

from labcommon.catalogue import PROBE, PROBE_DOWN, PROBE_UP
from labcommon.events import now_ns
from labcommon.programs import PROBER, ProberConfig
from labcommon.runtime import load_config, open_log

SYN, RST, ACK = 0x02, 0x04, 0x10
SEQ_MOD = 1 << 32


@dataclass
class Probe:
    seq: int
    sport: int
    isn: int
    sent_wall: float
    sent_ns: int


def source_ip_for(target_ip: str) -> str:
    """The address the kernel would use towards target_ip (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect((target_ip, 9))
        return sock.getsockname()[0]


def iface_for(target_ip: str) -> str:
    """The interface of the route to target_ip, read in this host's namespace."""
    iface = conf.route.route(target_ip)[0]
    return iface if isinstance(iface, str) else iface.name


class Prober:
    """Sends SYNs on a fixed schedule, matches replies from the sniffer thread."""

    def __init__(self, config: ProberConfig, log):
        self.config = config
        self.log = log
        self.src = config.source_ip or source_ip_for(config.target_ip)
        self.iface = config.iface or iface_for(config.target_ip)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        self.pending: dict[int, Probe] = {}
        self.lock = threading.Lock()
        self.counts = {"sent": 0, "ok": 0, "rst": 0, "timeout": 0, "error": 0}
        self.rng = random.Random()
        self.sniffer: AsyncSniffer | None = None

    def bpf_filter(self) -> str:
        low, high = self.config.sport_range
        return (f"tcp and src host {self.config.target_ip} and src port {self.config.port} "
                f"and dst host {self.src} and dst portrange {low}-{high}")

    def start_sniffer(self) -> None:
        ready = threading.Event()
        self.sniffer = AsyncSniffer(iface=self.iface, filter=self.bpf_filter(), store=False,
                                    prn=self.on_packet, started_callback=ready.set)
        self.sniffer.start()
        deadline = time.monotonic() + 10
        while not ready.wait(0.05):
            if not self.sniffer.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the sniffer on {self.iface} did not start (see the error above)")

    def sport_for(self, seq: int) -> int:
        low, high = self.config.sport_range
        return low + seq % (high - low + 1)

    def segment(self, sport: int, flags: str, seq: int) -> bytes:
        return raw(IP(src=self.src, dst=self.config.target_ip) /
                   TCP(sport=sport, dport=self.config.port, flags=flags, seq=seq, window=64240,
                       options=[("MSS", 1460)] if flags == "S" else []))

    def send_probe(self, seq: int) -> None:
        probe = Probe(seq, self.sport_for(seq), self.rng.getrandbits(32), 0.0, 0)
        data = self.segment(probe.sport, "S", probe.isn)
        with self.lock:
            self.pending[probe.sport] = probe
            probe.sent_ns, probe.sent_wall = now_ns(), time.time()
            self.counts["sent"] += 1
        try:
            self.sock.sendto(data, (self.config.target_ip, 0))
        except OSError as exc:  # e.g. no route while the network fails over: a failed probe
            with self.lock:
                self.pending.pop(probe.sport, None)
            self.finish(probe, "error", error=exc.strerror or type(exc).__name__)

    def on_packet(self, pkt) -> None:
        """Sniffer thread: resolve the probe this SYN-ACK or RST answers, if any."""
        seg = pkt.getlayer(TCP)
        if seg is None:
            return
        with self.lock:
            probe = self.pending.get(seg.dport)
            if probe is None or seg.ack != (probe.isn + 1) % SEQ_MOD:
                return
            del self.pending[seg.dport]
        flags = int(seg.flags)
        if flags & SYN and flags & ACK:
            self.finish(probe, "synack", float(pkt.time))
            if self.config.send_rst:
                self.sock.sendto(self.segment(probe.sport, "R", seg.ack), (self.config.target_ip, 0))
        elif flags & RST:
            self.finish(probe, "rst", float(pkt.time))

    def finish(self, probe: Probe, result: str, reply_wall: float | None = None, **extra: Any) -> None:
        fields: dict[str, Any] = {"seq": probe.seq, "sport": probe.sport, "isn": probe.isn,
                                  "ok": result == "synack", "result": result, **extra}
        if reply_wall is not None:
            fields["rtt_us"] = max(0, round((reply_wall - probe.sent_wall) * 1e6))
        with self.lock:
            self.counts["ok" if result == "synack" else result] += 1
        self.log.emit(PROBE, ts=probe.sent_ns, **fields)

    def expire(self, now: int) -> None:
        """Main thread: probes older than timeout_ms without a reply have failed."""
        limit = self.config.timeout_ms * 1_000_000
        with self.lock:
            late = [p for p in self.pending.values() if now - p.sent_ns >= limit]
            for probe in late:
                del self.pending[probe.sport]
        for probe in sorted(late, key=lambda p: p.seq):
            self.finish(probe, "timeout")

    def drain(self) -> None:
        """Give the last probes their full timeout, then count the rest as timeouts."""
        deadline = time.monotonic() + self.config.timeout_ms / 1000
        while self.pending and time.monotonic() < deadline:
            time.sleep(0.005)
        self.expire(now_ns() + self.config.timeout_ms * 1_000_000)

    def run(self, stop: threading.Event) -> dict[str, int]:
        """Probe until stop is set or duration_s has passed; returns the counts."""
        cfg = self.config
        try:
            self.start_sniffer()
            self.log.emit(PROBE_UP, target=cfg.target_ip, port=cfg.port, rate_hz=cfg.rate_hz, iface=self.iface,
                          src=self.src, filter=self.bpf_filter(), timeout_ms=cfg.timeout_ms,
                          sport_range=list(cfg.sport_range), send_rst=cfg.send_rst)
            self._loop(stop)
            self.drain()
        finally:
            if self.sniffer is not None and self.sniffer.running:
                self.sniffer.stop(join=True)
            self.sock.close()
        self.log.emit(PROBE_DOWN, **self.counts)
        return dict(self.counts)

    def _loop(self, stop: threading.Event) -> None:
        period = 1.0 / self.config.rate_hz
        next_at = time.monotonic()
        end = next_at + self.config.duration_s if self.config.duration_s else float("inf")
        seq = 0
        while not stop.is_set() and time.monotonic() < end:
            self.send_probe(seq)
            seq += 1
            self.expire(now_ns())
            next_at = max(next_at + period, time.monotonic())  # after a stall: no burst
            stop.wait(max(0.0, min(next_at, end) - time.monotonic()))


def checked(config: ProberConfig) -> ProberConfig:
    low, high = config.sport_range
    if not (1024 <= low <= high <= 65535) or config.rate_hz <= 0:
        raise SystemExit(f"traffic.prober: bad configuration: sport_range={config.sport_range}, "
                         f"rate_hz={config.rate_hz}")
    return config


def main(argv: list[str] | None = None) -> int:
    config = checked(load_config(PROBER, argv))
    log = open_log(config, config.name)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        Prober(config, log).run(stop)
    finally:
        log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
