"""What a spec would build, as text, without building it: ``caslab inspect SPEC`` and the
host table ``caslab up`` prints.

Everything here is read from the resolved spec and the addressing plan
(``topologies.plan``) through the same functions the runner uses (the mode's array
addresses, the DAG layout, each database's RpcClientAccessServer), so what ``inspect``
shows is what a run builds. Nothing is started, no root is needed.
"""

from __future__ import annotations

from typing import Any, Callable

from caslab.network import services

from caslab.spec import experiment as spec_mod
from caslab.network.context import RunContext
from caslab.faults import fault_for
from caslab.modes import mode_for
from topologies.plan import LabPlan, plan_from_topology

STARTUP_S = 15.0  # building the network and starting every process, before the warm-up (2 cores)


def duration_text(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def table(header: list[str], rows: list[list[str]]) -> str:
    """Left-aligned columns, as wide as their widest cell: nothing is cut."""
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header] + rows)


def host_rows(plan: LabPlan, extra: Callable[[str], list[str]] | None = None) -> list[list[str]]:
    """One row per host: name, role, site, address (with its back-end address, if any),
    and extra columns per host name."""
    def address(h) -> str:
        return f"{h.ip} (back end {plan.server_ip(h)})" if plan.on_backend(h) else (h.ip or "-")
    return [[h.name, h.role, h.site, address(h)] + (extra(h.name) if extra else []) for h in plan.hosts]


def dry_context(scenario: dict[str, Any], plan: LabPlan) -> RunContext:
    """A run context without a network: enough for the mode's and Exchange's pure answers."""
    ctx = RunContext(scenario, plan, lab=None, raw_dir=None, log=None,  # type: ignore[arg-type]
                     nlb_api_socket=None, mode=mode_for(scenario["mode"]))  # no controller: no socket to bind
    ctx.databases = services.database_layout(scenario, plan)
    return ctx


def arrays_lines(scenario: dict[str, Any], plan: LabPlan) -> list[str]:
    ctx = dry_context(scenario, plan)
    addresses = ctx.mode.array_addresses(ctx)
    lines = []
    for site, array in sorted(ctx.arrays().items()):
        answer = ", ".join(addresses.get(site, [])) or "no record in this mode"
        lines.append(f"array {array['name']} ({site}): {array['fqdn']} -> {answer}")
    if not lines:
        lines.append("no CAS array (arrays = [])")
    rcas = services.rpc_client_access_servers(ctx, ctx.mode.default_rcas(ctx))
    for db, layout in sorted(ctx.databases.items()):
        lines.append(f"{db}: active on {layout.active}, copies {', '.join(layout.copies)}; "
                     f"RpcClientAccessServer {rcas[db]}")
    return lines


def fault_lines(scenario: dict[str, Any]) -> list[str]:
    out = []
    for f in sorted(scenario["faults"], key=lambda f: (f["at_s"], f["index"])):
        extra = {k: v for k, v in f.items() if k not in ("kind", "target", "at_s", "index")}
        details = "".join(f" {k}={v}" for k, v in sorted(extra.items()))
        out.append(f"at {f['at_s']:g} s: {fault_for(f).label()}{details}")
    return out or ["none (a live lab takes them from: caslab fault KIND TARGET)"]


def inspect(spec: dict[str, Any], path: str) -> str:
    """The plan of a spec: scenarios, then per distinct topology its hosts, arrays,
    databases, clients and faults."""
    scenarios = spec_mod.scenarios(spec)
    exp, timing = spec["experiment"], spec["timing"]
    reps = exp["repetitions"]
    per_run = timing["warmup_s"] + timing["observe_s"] + STARTUP_S
    lines = [f"spec {path}: {exp['name']}", exp["description"] or "(no description)", "",
             f"{len(scenarios)} scenario(s) x {reps} repetition(s); each run: ~{STARTUP_S:.0f} s start-up, "
             f"{timing['warmup_s']:g} s warm-up, {timing['observe_s']:g} s window "
             f"(~{duration_text(len(scenarios) * reps * per_run)} in all)", ""]
    lines.append(table(["scenario", "mode", "sweep"],
                       [[s["label"], s["mode"], " ".join(f"{k}={v}" for k, v in s["params"].items()) or "-"]
                        for s in scenarios]))
    shown: list[dict[str, Any]] = []
    for s in scenarios:
        plan = plan_from_topology(s["topology"])
        c = s["clients"]
        lines += ["", f"== {s['label']} =="]
        if s["topology"] in shown:
            lines.append(f"hosts: as in the scenario above ({len(plan.hosts)} hosts)")
        else:
            shown.append(s["topology"])
            lines.append("switches: " + ", ".join(f"{site.switch} ({site.name} {site.subnet})"
                                                  for site in plan.sites) + (", router r1" if plan.routed else "")
                         + "".join(f", back-end Linux bridge {name} (CAS and mailbox servers' eth1)"
                                   for name in plan.backend_switch_names()))
            lines.append(table(["host", "role", "site", "address", "mac"],
                               host_rows(plan, lambda name: [plan.host(name).mac])))
        lines += arrays_lines(s, plan)
        lines.append(f"clients: {len(plan.by_role('client'))} host(s) x {c['sessions_per_host']} session(s), "
                     f"an operation every {c['interval_ms']} ms, RPC timeout {c['op_timeout_ms']} ms")
        lines += ["faults: " + line for line in fault_lines(s)]
    return "\n".join(lines) + "\n"
