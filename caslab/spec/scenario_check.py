"""One resolved scenario (a sweep point) checked against its own addressing plan.

Split from ``caslab.spec.experiment`` (which checks types and ranges): these checks need the plan
the scenario's topology builds, the HA mode's capabilities and each fault's own rules.
The live lab (``caslab up``) checks a fault given from another shell with the same
``check_fault_in``.
"""

from __future__ import annotations

import difflib
from typing import Any

from caslab.faults import BUSIEST, FAULTS
from caslab.schema.http import check_http
from caslab.modes import MODES
from caslab.schema.fields import SpecError
from caslab.schema.exchange import check_exchange
from topologies.plan import LabPlan, plan_from_topology


def check_scenario(source: str, scenario: dict[str, Any]) -> None:
    """Consistency of one resolved scenario (a sweep point) with its addressing plan."""
    topo = scenario["topology"]
    for key in ("wan_bw_mbit", "wan_delay_ms", "wan_firewall", "branch_mailboxes"):
        if topo[key] and not topo["branch"]:
            raise SpecError(source, f"topology.{key}", "0 without a Branch site (topology.branch = true): "
                                                       "there is no WAN link to shape", topo[key])
    if topo["backend_network"]:
        others = [key for key in ("branch", "internet_client_hosts", "hypervisors") if topo[key]]
        if others:
            raise SpecError(source, "topology.backend_network", f"false with topology.{others[0]}: the back-end "
                                                                "network is built for one site of physical servers",
                            True)
    try:
        plan = plan_from_topology(topo)
    except ValueError as exc:
        raise SpecError(source, "topology", str(exc)) from None
    hosts = {h.name: h for h in plan.hosts}
    window_ms = scenario["timing"]["observe_s"] * 1000
    clients = scenario["clients"]
    for key in ("op_timeout_ms", "connect_timeout_ms"):
        if clients[key] >= window_ms:
            raise SpecError(source, f"clients.{key}", f"less than the observation window "
                                                      f"(timing.observe_s = {scenario['timing']['observe_s']:g} s)",
                            clients[key])
    if clients["distinct_source_ips"] and clients["sessions_per_host"] > 250:
        raise SpecError(source, "clients.sessions_per_host", "at most 250 with clients.distinct_source_ips "
                                                            "(one address per session)", clients["sessions_per_host"])
    check_exchange(source, scenario, plan, hosts)
    mode = MODES[scenario["mode"]]
    check_http(source, scenario, mode.capabilities, mode.name, set(hosts))
    if topo["multi_role"] and mode.multi_role_refusal:
        raise SpecError(source, "topology.multi_role", f"a mode other than {mode.name}: {mode.multi_role_refusal}",
                        True)
    if topo["multi_role"] and plan.virtualized:
        raise SpecError(source, "topology.multi_role", "false with topology.hypervisors: the lab runs only "
                                                       "single-role CAS as virtual machines", True)
    if plan.virtualized and not mode.multi_switch:
        raise SpecError(source, "topology.hypervisors", f"0 with mode {mode.name}: it needs every CAS on the "
                                                        "site switch", topo["hypervisors"])
    for fault in scenario["faults"]:
        check_fault_in(source, scenario, plan, fault)


def check_fault_in(source: str, scenario: dict[str, Any], plan: LabPlan, fault: dict[str, Any]) -> None:
    """One validated fault against its scenario: targets of the right role in this plan,
    a time inside the window, a mode that offers what it needs, the fault's own checks."""
    hosts = {h.name: h for h in plan.hosts}
    mode = MODES[scenario["mode"]]
    key = f"faults[{fault['index']}]"
    cls = FAULTS[fault["kind"]]
    for target in fault["target"]:
        if target == BUSIEST and "cas" in cls.target_roles:
            continue  # chosen at the fault's instant: the CAS serving the most sessions
        host = hosts.get(target) if isinstance(target, str) else None
        if host is None or not set(host.roles) & set(cls.target_roles):
            allowed = sorted((h for h in hosts.values() if set(h.roles) & set(cls.target_roles)), key=lambda h: h.ip)
            names = [h.name for h in allowed]
            close = difflib.get_close_matches(str(target), names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise SpecError(source, f"{key}.target", f"a host of this topology whose role is one of "
                                                     f"{list(cls.target_roles)}: {names}{hint}", target)
    if fault["at_s"] >= scenario["timing"]["observe_s"]:
        raise SpecError(source, f"{key}.at_s", f"a time before the end of the observation window "
                                               f"(timing.observe_s = {scenario['timing']['observe_s']:g})",
                        fault["at_s"])
    missing = cls.requires - mode.capabilities
    if missing:
        raise SpecError(source, f"{key}.kind", f"a fault mode {mode.name} supports: {fault['kind']} needs "
                                               f"{' and '.join(sorted(missing))}, which {mode.name} does not have",
                        fault["kind"])
    cls.check(fault, scenario, plan, source, key)


