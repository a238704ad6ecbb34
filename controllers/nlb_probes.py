"""What the SDN NLB hears from outside its switches (mixed into the app, SdnNlb): the
health agents' probe reports on a Unix datagram socket, and its own guard counters.

No datagram can stop the loop: each is checked (UTF-8, nesting, fields) and anything
wrong is skipped. fall/rise counting is in ``nlb_logic.HealthTracker``; a convergence
delay (the Windows NLB emulation) postpones the verdict.
"""

from __future__ import annotations

import json
import os

from controllers.compat import hub
from labcommon.catalogue import NLB_CONVERGING, NLB_GUARD, NLB_HEALTH_SOCKET_ERROR
from labcommon.protocol import MAX_DEPTH, nesting_depth


class HealthMixin:
    def _health_loop(self, path: str) -> None:
        import socket

        if os.path.exists(path):
            os.unlink(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.bind(path)
            os.chmod(path, 0o600)
        except OSError as exc:  # e.g. a path over 107 bytes: say so instead of dying silently
            self.event_log.emit(NLB_HEALTH_SOCKET_ERROR, path=path, reason=str(exc))
            return
        while True:
            data = sock.recv(4096)
            try:  # no datagram can stop the loop, whatever it holds
                text = data.decode("utf-8")
                if nesting_depth(text) > MAX_DEPTH:
                    continue
                report = json.loads(text)
                self.on_probe(str(report["vip"]), str(report["member"]), report["ok"] is True,
                              str(report.get("detail", ""))[:100])
            except Exception:  # noqa: BLE001
                continue

    def on_probe(self, vip_ip: str, name: str, ok: bool, detail: str = "") -> None:
        with self.lock:
            vip = next((v for v in self.vips if v.ip == vip_ip), None)
            if vip is None or name not in vip.health:
                return
            flipped = vip.health[name].record(ok)
            if flipped is None:
                return
            reason = "probe_up" if flipped else f"probe_down:{detail}"
            if self.convergence_s > 0:
                self.event_log.emit(NLB_CONVERGING, vip=vip.ip, member=name, alive=flipped)
                hub.spawn_after(self.convergence_s, self.set_member, vip, name, reason, healthy=flipped)
            else:
                self.set_member(vip, name, reason, healthy=flipped)

    def _guard_report(self) -> None:
        """Once a second: how many packet-ins the app refused (rate limit)."""
        while True:
            hub.sleep(1)
            refused = self.limiter.take_refused()
            if refused:
                self.stats["dropped"] += refused
                self.event_log.emit(NLB_GUARD, reason="rate_limited", count=refused)
