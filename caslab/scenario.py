"""One scenario run: build the network, start everything, measure, inject faults, tear down.

The order matters and is the same for every mode:

    build hosts -> start controller -> start switches -> roles -> mode extras -> clients
    -> all sessions logged on -> warm-up -> faults at their times -> observe -> stop

Teardown runs in ``finally`` whatever happened (error, Ctrl-C, SIGTERM), and the raw
event logs written so far stay on disk.
"""

from __future__ import annotations

import json
import shutil
import socket
import sqlite3
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

from caslab import faults, modes, services, system
from caslab.events import EventLog, read_events
from caslab.netlab import LabError, LabNetwork, free_tcp_port
from caslab.services import Context
from topologies.plan import LabPlan

Progress = Callable[[str], None]


def plan_for(spec: dict[str, Any]) -> LabPlan:
    topo = spec["topology"]
    sites = [{"name": "HQ", "cas": topo["cas"], "mailboxes": topo["mailboxes"], "clients": topo["client_hosts"]}]
    if topo["branch"]:
        sites.append({"name": "Branch", "cas": topo["branch_cas"], "mailboxes": 0,
                      "clients": topo["branch_client_hosts"]})
    return LabPlan.build(sites)


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.05) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval_s)
    raise LabError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def count_events(raw_dir: Path, sources: list[str], ev: str) -> int:
    total = 0
    for source in sources:
        path = raw_dir / f"{source}.jsonl"
        if path.exists():
            total += sum(1 for e in read_events(path) if e.get("ev") == ev)
    return total


def sessions_logged_on(raw_dir: Path, clients: list[str]) -> int:
    sessions = set()
    for client in clients:
        path = raw_dir / f"{client}.jsonl"
        if path.exists():
            sessions.update(e["session"] for e in read_events(path) if e.get("ev") == "op" and e.get("ok"))
    return len(sessions)


def port_listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class CpuSampler(threading.Thread):
    """Logs CPU idle % once a second (Mininet-HiFi's fidelity check wants >= 35 %)."""

    def __init__(self, log: EventLog):
        super().__init__(daemon=True)
        self.log = log
        self.halt = threading.Event()

    @staticmethod
    def _times() -> tuple[int, int]:
        with open("/proc/stat") as handle:
            values = [int(v) for v in handle.readline().split()[1:]]
        return values[3] + values[4], sum(values)

    def run(self) -> None:
        idle0, total0 = self._times()
        while not self.halt.wait(1.0):
            idle1, total1 = self._times()
            if total1 > total0:
                self.log.emit("cpu", idle_pct=round(100.0 * (idle1 - idle0) / (total1 - total0), 1))
            idle0, total0 = idle1, total1


def wan_options(scenario: dict[str, Any], log: EventLog, progress: Progress) -> dict[str, float]:
    """WAN shaping for the Branch link; delay only where the kernel has sch_netem."""
    topo = scenario["topology"]
    options = {"wan_bw_mbit": topo["wan_bw_mbit"], "wan_delay_ms": topo["wan_delay_ms"]}
    if topo["wan_delay_ms"] and not system.netem_available():
        options["wan_delay_ms"] = 0
        message = (f"WAN delay of {topo['wan_delay_ms']:g} ms skipped: this kernel has no sch_netem "
                   "(link bandwidth limits still apply)")
        log.emit("capability_missing", capability="netem", detail=message)
        progress(message)
    return options


def start_controller(ctx: Context, mode: modes.Mode, port: int) -> None:
    config = mode.controller_config(ctx)
    env = {}
    if config is not None:
        env["CASLAB_NLB_CONFIG"] = str(ctx.write_config("controller", config))

    def launch():
        ctx.controller = ctx.lab.popen_root("controller", [sys.executable, "-m", "controllers.launcher",
                                                          "--port", str(port), mode.controller_app], env=env)
        ctx.log.emit("controller_start", app=mode.controller_app, pid=ctx.controller.pid)

    launch()
    ctx.extra["restart_controller"] = launch
    wait_until(lambda: port_listening(port), 30, f"the controller to listen on 127.0.0.1:{port}")


def start_captures(ctx: Context) -> None:
    """tcpdump on each client host's link (headers only), for cross-checking client events."""
    for host in ctx.plan.by_role("client"):
        node = ctx.lab.node(host.name)
        pcap = ctx.raw_dir / f"{host.name}.pcap"
        ctx.lab.popen_in(host.name, f"tcpdump-{host.name}",
                         ["tcpdump", "-i", node.intf().name, "-n", "-s", "128", "-U", "-w", str(pcap),
                          "tcp", "port", str(services.CAS_PORT)])


def start_prober(ctx: Context, mode: modes.Mode) -> None:
    """scapy SYN probes from the first client host to the array's first address."""
    client = ctx.plan.by_role("client")[0]
    addresses = mode.array_addresses(ctx).get(client.site) or [ctx.plan.by_role("cas", client.site)[0].ip]
    config = {"name": f"probe-{client.name}", "target_ip": addresses[0], "port": services.CAS_PORT,
              "rate_hz": ctx.spec["probe"]["rate_hz"], "timeout_ms": 200,
              "events": ctx.events_path(f"probe-{client.name}")}
    ctx.start_module(client.name, f"probe-{client.name}", "traffic.prober", config)


def record_mailboxes(ctx: Context) -> None:
    """Log what each database copy holds at the end, so metrics need only the events."""
    for db, entry in ctx.extra.get("databases", {}).items():
        for server in entry["copies"]:
            path = ctx.raw_dir / "store" / server / f"{db}.sqlite"
            if not path.exists():
                continue
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                ids = sorted(row[0] for row in conn.execute("SELECT msg_id FROM messages"))
            finally:
                conn.close()
            ctx.log.emit("mailbox_contents", db=db, server=server, active=server == entry["active"], msg_ids=ids)


def run_scenario(scenario: dict[str, Any], repetition: int, raw_dir: Path, progress: Progress) -> None:
    """Run one scenario repetition; raw logs land in raw_dir (kept whatever happens)."""
    raw_dir.mkdir(parents=True, exist_ok=True)
    plan = plan_for(scenario)
    mode = modes.get(scenario["mode"])
    of_port = free_tcp_port()
    log = EventLog(raw_dir / "runner.jsonl", "runner")
    lab = LabNetwork(plan, raw_dir, of_port, topo_options=wan_options(scenario, log, progress))
    ctx = Context(scenario, plan, lab, raw_dir, log, extra={"repetition": repetition, "nlb_api_port": free_tcp_port()})
    sampler = CpuSampler(log)
    timing = scenario["timing"]
    clients = [h.name for h in plan.by_role("client")]
    client_procs = []
    log.emit("scenario_start", mode=scenario["mode"], label=scenario["label"], repetition=repetition,
             datapath=lab.datapath, plan={h.name: {"role": h.role, "ip": h.ip, "site": h.site} for h in plan.hosts})
    try:
        sampler.start()
        progress("building network")
        lab.build()
        start_controller(ctx, mode, of_port)
        lab.start()
        lab.wait_connected()
        progress("starting Exchange roles")
        services.start_dns(ctx, services.dns_records(ctx, mode.array_addresses(ctx)))
        mailboxes = services.start_mailboxes(ctx)
        cas = services.start_cas(ctx)
        autodiscover = services.start_autodiscover(ctx, services.rpc_client_access_servers(ctx, mode.default_rcas(ctx)))
        role_names = [p.name for p in mailboxes + cas + autodiscover]
        wait_until(lambda: count_events(raw_dir, role_names, "service_up") >= len(role_names),
                   timing["ready_timeout_s"], "mailbox, CAS and autodiscover services to start")
        mode.start(ctx)  # load balancers and health checks start on services that answer
        if scenario["probe"]["capture"]:
            start_captures(ctx)
        if scenario["probe"]["rate_hz"] > 0:
            start_prober(ctx, mode)
        progress("starting clients")
        client_procs = services.start_clients(ctx, lambda c: mode.target(ctx, c))
        lab.record_pids()
        expected = len(clients) * scenario["clients"]["sessions_per_host"]
        wait_until(lambda: sessions_logged_on(raw_dir, clients) >= expected, timing["ready_timeout_s"],
                   f"all {expected} client sessions to complete an operation")
        progress("warming up")
        time.sleep(timing["warmup_s"])
        run_timeline(ctx, scenario["faults"], timing["observe_s"], progress)
        for proc in client_procs:
            proc.stop()
        record_mailboxes(ctx)
        log.emit("scenario_end", ok=True)
    except BaseException as exc:
        log.emit("scenario_end", ok=False, error=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        sampler.halt.set()
        for timer in ctx.extra.get("timers", []):
            timer.cancel()
        try:
            lab.stop()
        finally:
            if "socket_dir" in ctx.extra:
                shutil.rmtree(ctx.extra["socket_dir"], ignore_errors=True)
            log.close()


def run_timeline(ctx: Context, fault_list: list[dict[str, Any]], observe_s: float, progress: Progress) -> None:
    """Measurement window: faults fire at their at_s offsets from its start."""
    start = time.monotonic()
    ctx.log.emit("measure_start", observe_s=observe_s)
    for fault in sorted(fault_list, key=lambda f: f["at_s"]):
        delay = start + fault["at_s"] - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        progress(f"fault {fault['kind']} {','.join(fault['target'])}")
        faults.inject(ctx, fault)
    progress("observing")
    remaining = start + observe_s - time.monotonic()
    if remaining > 0:
        time.sleep(remaining)
    ctx.log.emit("measure_end")


def merge_raw(raw_dir: Path, out, scenario_id: str, repetition: int) -> int:
    """Append this run's raw logs, tagged and time-ordered, to the experiment's events.jsonl."""
    events = []
    for path in sorted(raw_dir.glob("*.jsonl")):
        for ev in read_events(path):
            ev["scenario"] = scenario_id
            ev["rep"] = repetition
            events.append(ev)
    events.sort(key=lambda e: (e["ts"], e.get("src", ""), json.dumps(e, sort_keys=True)))
    for ev in events:
        out.write(json.dumps(ev, separators=(",", ":"), sort_keys=True) + "\n")
    out.flush()
    return len(events)
