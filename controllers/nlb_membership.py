"""Membership changes of the SDN NLB: link, health, admin and drain state in, flows out.

A mixin of ``controllers.sdn_nlb.SdnNlb`` (kept apart so the app file stays readable):
``set_member`` applies one change to the pool and acts on what it changed (evict a member
that stopped serving, re-admit one that came back, re-program the select group when the
set of members taking new connections changed). Admin and drain state are also written
to ``AdminState`` so they survive a controller restart; a drain deadline carries a
generation so a stale timer never evicts a member that was rejoined meanwhile.
"""

from __future__ import annotations

import time

from controllers.compat import hub
from controllers.nlb_flows import FlowBuilder
from controllers.nlb_state import Vip
from labcommon.catalogue import LB_MEMBER, NLB_EVICT
from labcommon.events import now_ns


class MembershipMixin:
    def set_member(self, vip: Vip, name: str, reason: str, **changes) -> None:
        """Apply a link / health / admin / drain change and act on what it changed."""
        decided = now_ns()
        with self.lock:
            member = vip.pool.members[name]
            was_serving, was_accepting = member.in_service, member.accepts_new
            vip.pool.set_state(name, **changes)
            dp = self.datapaths.get(vip.dpid)
            if was_serving and not member.in_service:
                self.evict(vip, name, reason)  # first: its clients are waiting
            elif member.in_service and (not was_serving or (member.accepts_new and not was_accepting)) \
                    and self.dataplane == "switch" and dp is not None:  # back, or rejoined after a drain deadline
                build = FlowBuilder(dp)
                self._send(dp, build.forget_dead_member(vip, vip.member_index[name])
                           + self._strays(build, vip))
            if self.dataplane == "switch" and dp is not None and was_accepting != member.accepts_new:
                self._send(dp, [self._group(FlowBuilder(dp), vip)])
            self.event_log.emit(LB_MEMBER, ts=decided, vip=vip.ip, member=name, reason=reason,
                                alive=member.in_service, draining=member.draining, accepts_new=member.accepts_new)

    def evict(self, vip: Vip, name: str, reason: str) -> None:
        """Every connection on ``name`` is over: stop forwarding it and reset its clients."""
        dp = self.datapaths.get(vip.dpid)
        index = vip.member_index[name]
        if self.dataplane == "switch":
            if dp is None:
                return
            build = FlowBuilder(dp)
            # this one, and every other dead one (its survivor may have been this one)
            dead = [m for m in vip.pool.members.values() if m.name == name or not m.in_service]
            # strays (the connections the failover will make the switch forget) to members in service only
            msgs = self._strays(build, vip) + [f for m in dead for f in self._dead_flows(build, vip, m)]
            applied = self._send_with_barrier(dp, msgs)
            if self.fast_fail:
                self.failovers.put((dp, vip, index, name, reason, now_ns(), applied))
            else:
                self.event_log.emit(NLB_EVICT, vip=vip.ip, member=name, reason=reason, conns=0, fast_fail=False)
            return
        conns = vip.conns.on_backend(name)
        if dp is not None:
            self._send(dp, FlowBuilder(dp).unpin_member(vip, index))
            if self.fast_fail and conns:
                self.challenger.add(dp, vip, conns, now=False)  # after the flow delete, not before
        for conn in conns:
            vip.conns.remove(conn.key)
        self.event_log.emit(NLB_EVICT, vip=vip.ip, member=name, reason=reason, conns=len(conns),
                            fast_fail=self.fast_fail)

    def admin_set(self, vip: Vip, name: str, up: bool) -> None:
        self.admin.set(vip.ip, name, admin_up=up)
        self.set_member(vip, name, "admin_up" if up else "admin_down", admin_up=up)

    def drain(self, vip: Vip, name: str, deadline_s: float | None = None) -> None:
        with self.lock:
            vip.drain_generation[name] += 1
            generation = vip.drain_generation[name]
            self.admin.set(vip.ip, name, draining=True,
                           drain_deadline_wall=None if deadline_s is None else time.time() + deadline_s)
            self.set_member(vip, name, "drain", draining=True)
        if deadline_s is not None:
            hub.spawn_after(deadline_s, self._drain_deadline, vip, name, generation)

    def _drain_deadline(self, vip: Vip, name: str, generation: int) -> None:
        with self.lock:  # a rejoin (or a newer drain) since then makes this timer stale
            if vip.pool.members[name].draining and vip.drain_generation[name] == generation:
                self.evict(vip, name, "drain_deadline")

    def set_affinity(self, vip: Vip, affinity: str) -> None:
        with self.lock:
            vip.pool.affinity = affinity
            dp = self.datapaths.get(vip.dpid)
            if self.dataplane == "switch" and dp is not None:
                self._send(dp, [self._group(FlowBuilder(dp), vip)])

    def rejoin(self, vip: Vip, name: str) -> None:
        with self.lock:
            vip.drain_generation[name] += 1
            self.admin.set(vip.ip, name, draining=False, drain_deadline_wall=None)
            self.set_member(vip, name, "rejoin", draining=False)

