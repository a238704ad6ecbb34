"""One scenario run: build the network, start everything, measure, inject faults, tear down.

The order matters and is the same for every mode:

    build hosts -> start controller -> start switches -> roles -> mode extras -> clients
    -> all sessions logged on -> warm-up -> faults at their times -> observe -> stop

Teardown runs in ``finally`` whatever happened (error, Ctrl-C, SIGTERM), and the raw
event logs written so far stay on disk.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from caslab import faults

from caslab.network import http_services, hypervisor, services, wan

from caslab.base import procstat, system
from caslab.network.context import RunContext
from caslab.run.cost import CostMeter
from caslab.modes import Mode, mode_for
from caslab.network.netlab import LabError, LabNetwork, LabProcess
from caslab.base.waits import LogTail, session_ready, wait_for_events, wait_ready
from labcommon.catalogue import (
    CAPABILITY_MISSING, CLIENTS_READY, CLOCKS, CONTROLLER_START, CPU, LOAD, MAILBOX_CONTENTS, MEASURE_END, MEASURE_START,
    PROCESS_EXIT, SCENARIO_END, SCENARIO_START, WAN_FIREWALL,
)
from labcommon.events import EventLog, read_events
from labcommon.ports import CAS_PORT
from labcommon.programs import (
    APP_PROBER, CLIENT, CONTROLLER, HTTP_CLIENT, PROBER, TCPDUMP, AppProberConfig, ProberConfig, config_json,
)
from topologies.plan import plan_from_topology

Progress = Callable[[str], None]
LOAD_EVERY_S = 0.025  # a recovery of 50 ms spans two readings


class CpuSampler(threading.Thread):
    """Logs CPU idle % once a second (Mininet-HiFi's fidelity check wants >= 35 %), and
    the machine's raw CPU counters every ``LOAD_EVERY_S`` (``load`` events: the busy
    share and the CPU pressure of a failover's recovery, which lasts tens to hundreds of
    ms, are read from them)."""

    def __init__(self, log: EventLog):
        super().__init__(daemon=True)
        self.log = log
        self.halt = threading.Event()

    def run(self) -> None:
        earlier = procstat.read_machine_times()
        per_second = round(1.0 / LOAD_EVERY_S)
        tick = 0
        while not self.halt.wait(LOAD_EVERY_S):
            later = procstat.read_machine_times()
            self.log.emit(LOAD, idle_ticks=later[0], total_ticks=later[1], tick_ms=procstat.TICK_MS,
                          pressure_us=procstat.read_cpu_pressure_us())
            tick += 1
            if tick % per_second:
                continue
            idle = procstat.idle_pct(earlier, later)
            if idle is not None:
                self.log.emit(CPU, idle_pct=round(idle, 1))
            earlier = later


class ExitWatcher(threading.Thread):
    """Logs a lab process that ends on its own mid-run (a client that crashed, say), so
    metrics can tell its silent sessions from healthy ones."""

    def __init__(self, ctx: RunContext):
        super().__init__(daemon=True)
        self.ctx = ctx
        self.halt = threading.Event()
        self.seen: set[int] = set()

    def run(self) -> None:
        while not self.halt.wait(0.2):
            for proc in list(self.ctx.lab.processes):
                if proc.pid in self.seen or proc.alive() or proc.ended_on_purpose:
                    continue
                self.seen.add(proc.pid)
                self.ctx.log.emit(PROCESS_EXIT, name=proc.name, host=proc.host, returncode=proc.popen.returncode)


def wan_options(scenario: dict[str, Any], log: EventLog, progress: Progress) -> dict[str, float]:
    """WAN shaping for the Branch link; delay only where the kernel has sch_netem."""
    topo = scenario["topology"]
    options = {"wan_bw_mbit": topo["wan_bw_mbit"], "wan_delay_ms": topo["wan_delay_ms"]}
    if topo["wan_delay_ms"] and not system.netem_available():
        options["wan_delay_ms"] = 0
        message = (f"WAN delay of {topo['wan_delay_ms']:g} ms skipped: this kernel has no sch_netem "
                   "(link bandwidth limits still apply)")
        log.emit(CAPABILITY_MISSING, capability="netem", detail=message)
        progress(message)
    return options


def start_controller(ctx: RunContext, mode: Mode) -> None:
    """Start the mode's controller app on the lab's OpenFlow channel (after ``lab.build``).
    It inherits the channel's listening socket and, with an admin API, the API's: both stay
    bound by the runner, so a restarted controller (``controller-crash``) gets them again
    and nobody else can take either port meanwhile."""
    config = mode.controller_config(ctx)
    env, fds = {}, ()
    if config is not None:
        env["CASLAB_NLB_CONFIG"] = str(ctx.write_config("controller", config_json(CONTROLLER, config)))
        if config.api:
            fds = (ctx.nlb_api_socket.fileno(),)

    def launch():
        ctx.controller = ctx.lab.popen_controller(mode.controller_app, env=env, pass_fds=fds)
        ctx.log.emit(CONTROLLER_START, app=mode.controller_app, pid=ctx.controller.pid)

    launch()
    ctx.restart_controller = launch


def start_captures(ctx: RunContext) -> None:
    """tcpdump on each client host's link (headers only), for cross-checking client events."""
    for host in ctx.plan.by_role("client"):
        pcap = ctx.raw_dir / f"{host.name}.pcap"
        ctx.start_tool(TCPDUMP, host.name, ["tcpdump", "-i", ctx.lab.host_interface(host.name), "-n", "-s", "128",
                                            "-U", "-w", str(pcap), "tcp", "port", str(CAS_PORT)])


def start_probers(ctx: RunContext, mode: Mode) -> None:
    """From the first client host: scapy SYN probes to the array's first address, and
    application probes through the array name (resolve, connect, logon, one operation)."""
    client = ctx.plan.by_role("client")[0]
    probe = ctx.spec["probe"]
    if probe["rate_hz"] > 0:
        addresses = mode.array_addresses(ctx).get(client.site) or [ctx.plan.by_role("cas", client.site)[0].ip]
        name = PROBER.process_name(client.name)
        ctx.start_program(PROBER, client.name, ProberConfig(name=name, target_ip=addresses[0], port=CAS_PORT,
                                                            rate_hz=probe["rate_hz"], timeout_ms=200,
                                                            events=ctx.events_path(name)))
    if probe["app_rate_hz"] > 0:
        user = services.probe_user(client)
        name = APP_PROBER.process_name(client.name)
        ctx.start_program(APP_PROBER, client.name, AppProberConfig(
            name=name, rate_hz=probe["app_rate_hz"], port=CAS_PORT, target=mode.target(ctx, client),
            user=user["user"], db=user["db"], timeout_ms=min(1000, ctx.spec["clients"]["op_timeout_ms"]),
            events=ctx.events_path(name)))


def record_mailboxes(ctx: RunContext) -> None:
    """Log what each database copy holds at the end, so metrics need only the events."""
    for db, entry in ctx.databases.items():
        for server in entry.copies:
            path = ctx.store_dir() / server / f"{db}.sqlite"
            if not path.exists():
                continue
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                ids = sorted(row[0] for row in conn.execute("SELECT msg_id FROM messages"))
            finally:
                conn.close()
            ctx.log.emit(MAILBOX_CONTENTS, db=db, server=server, active=server == entry.active, msg_ids=ids)


@dataclass
class LabUp:
    """A lab that is up: every role, the mode's load balancer and (unless asked not to)
    the clients, each session logged on. What ``lab_up`` yields."""

    ctx: RunContext
    mode: Mode
    of_port: int
    clients: list[LabProcess]
    watcher: "ExitWatcher"

    def finish(self) -> None:
        """The orderly end of a lab's life: clients stop, each copy's contents are logged."""
        self.watcher.halt.set()
        stop_all(self.clients)
        record_mailboxes(self.ctx)
        if self.ctx.spec["topology"]["wan_firewall"]:
            self.ctx.log.emit(WAN_FIREWALL, dropped=wan.dropped_packets(self.ctx),
                              detail="the WAN router drops every CAS connection to another site's mailbox servers")


@contextmanager
def lab_up(scenario: dict[str, Any], repetition: int, raw_dir: Path, progress: Progress,
           clients: bool = True) -> Iterator[LabUp]:
    """Build the network and start everything a run needs, in the order of the module
    docstring, up to "every client session completed an operation"; tear it all down on
    leaving, whatever happened. ``caslab run`` and ``caslab up`` share this path."""
    raw_dir.mkdir(parents=True, exist_ok=True)
    plan = plan_from_topology(scenario["topology"])
    mode = mode_for(scenario["mode"])
    log = EventLog(raw_dir / "runner.jsonl", "runner")
    lab = LabNetwork(plan, raw_dir, topo_options=wan_options(scenario, log, progress),
                     switch_ports=scenario["topology"]["switch_ports"])
    ctx = RunContext(scenario, plan, lab, raw_dir, log, repetition=repetition, mode=mode)
    sampler, watcher = CpuSampler(log), ExitWatcher(ctx)
    timing = scenario["timing"]
    log.emit(SCENARIO_START, mode=scenario["mode"], label=scenario["label"], repetition=repetition,
             datapath=lab.datapath, plan={h.name: {"role": h.role, "ip": h.ip, "site": h.site} for h in plan.hosts})
    try:
        sampler.start()
        progress("building network")
        lab.build()
        start_controller(ctx, mode)
        lab.start()
        for notice in lab.port_notices:
            log.emit(CAPABILITY_MISSING, capability="afxdp", detail=notice)
            progress(notice)
        lab.wait_connected()
        mode.prepare(ctx)
        hypervisor.start(ctx)
        if scenario["topology"]["wan_firewall"]:
            wan.apply_firewall(ctx)
        progress("starting Exchange roles")
        http_services.prepare_tls(ctx)
        array_addresses = mode.array_addresses(ctx)
        services.start_dns(ctx, services.dns_records(ctx, array_addresses)
                           | http_services.dns_records(ctx, array_addresses))
        roles = services.start_mailboxes(ctx)
        roles += services.start_cas(ctx, http_services.cas_config(ctx))
        roles += services.start_autodiscover(ctx, services.rpc_client_access_servers(ctx, mode.default_rcas(ctx)),
                                             http_services.http_users(ctx), http_services.site_urls(ctx, array_addresses))
        wait_ready(raw_dir, roles, timing["ready_timeout_s"], "mailbox, CAS and autodiscover services to start")
        mode.start(ctx)  # load balancers and health checks start on services that answer
        if scenario["probe"]["capture"]:
            start_captures(ctx)
        start_probers(ctx, mode)
        up = LabUp(ctx, mode, lab.controller_port, [], watcher)
        watcher.start()
        if clients:
            progress("starting clients")
            up.clients = start_sessions(ctx, mode, raw_dir, timing, progress)
        lab.started_up()
        yield up
        log.emit(SCENARIO_END, ok=True)
    except BaseException as exc:
        log.emit(SCENARIO_END, ok=False, error=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        sampler.halt.set()
        watcher.halt.set()
        ctx.close()
        try:
            lab.stop()
        finally:
            try:
                ctx.keep_stores()
            finally:
                log.close()


def start_sessions(ctx: RunContext, mode: Mode, raw_dir: Path, timing: dict[str, Any],
                   progress: Progress) -> list[LabProcess]:
    """Start the client hosts' sessions (Outlook and HTTP) and wait until each completed an
    operation (or, with ``timing.all_ready = false``, until ready_timeout_s, naming the
    ones that never did)."""
    procs = services.start_clients(ctx, lambda c: mode.target(ctx, c))
    http_procs, http_sources, http_sessions = http_services.start_clients(ctx)
    procs += http_procs
    clients = [h.name for h in ctx.plan.by_role("client")]
    per_host = ctx.spec["clients"]["sessions_per_host"]
    wanted = {f"{c}-s{i}" for c in clients for i in range(per_host)} | set(http_sessions)
    ready = wait_for_events(LogTail(raw_dir, clients + http_sources), len(wanted), session_ready([CLIENT, HTTP_CLIENT]),
                            timing["ready_timeout_s"], "", required=False)
    missing = sorted(wanted - ready)
    if missing and timing["all_ready"]:
        raise LabError(f"timed out after {timing['ready_timeout_s']:.0f} s waiting for all {len(wanted)} client "
                       f"sessions to complete an operation (or, over HTTP, to find autodiscover unreachable); "
                       f"never did: {', '.join(missing[:12])}{' ...' if len(missing) > 12 else ''}")
    if missing:
        progress(f"{len(missing)} of {len(wanted)} sessions never completed an operation; measuring anyway")
        ctx.log.emit(CLIENTS_READY, sessions=len(wanted), missing=missing)
    else:
        ctx.log.emit(CLIENTS_READY, sessions=len(wanted))
    return procs


def run_scenario(scenario: dict[str, Any], repetition: int, raw_dir: Path, progress: Progress) -> None:
    """Run one scenario repetition; raw logs land in raw_dir (kept whatever happens)."""
    with lab_up(scenario, repetition, raw_dir, progress) as up:
        progress("warming up")
        time.sleep(scenario["timing"]["warmup_s"])
        run_timeline(up.ctx, scenario["faults"], scenario["timing"]["observe_s"], progress)
        up.finish()


def stop_all(procs: list[LabProcess]) -> None:
    for proc in procs:
        proc.stop()


class Window:
    """The measurement window: the lab's own CPU is metered over it, the wall clock is
    logged beside the monotonic one at its start (for the captures), and the mode reads
    its own counters at both ends (e.g. Windows NLB's frames flooded to non-members)."""

    def __init__(self, ctx: RunContext):
        self.ctx = ctx
        self.cost = CostMeter(ctx.lab)
        self.mode = ctx.mode

    def open(self, observe_s: float) -> None:
        log_clocks(self.ctx.log)
        self.cost.start(time.monotonic_ns())
        self.ctx.log.emit(MEASURE_START, observe_s=observe_s)
        self.mode.measure_start(self.ctx)

    def close(self) -> None:
        self.ctx.log.emit(MEASURE_END)
        self.cost.stop(self.ctx.log, time.monotonic_ns())
        self.mode.measure_end(self.ctx)


def inject_fault(ctx: RunContext, spec: dict[str, Any]) -> faults.Fault:
    """Inject a fault now, and undo it after its duration_s where it has one."""
    fault = faults.inject(ctx, spec)
    if spec.get("duration_s"):
        ctx.later(spec["duration_s"], lambda fault=fault: faults.undo(ctx, fault))
    return fault


def run_timeline(ctx: RunContext, fault_list: list[dict[str, Any]], observe_s: float, progress: Progress) -> None:
    """Measurement window: faults fire at their at_s offsets from its start (and are
    undone after their duration_s, where they have one)."""
    start = time.monotonic()
    window = Window(ctx)
    window.open(observe_s)
    for spec in sorted(fault_list, key=lambda f: (f["at_s"], f["index"])):
        delay = start + spec["at_s"] - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        progress(f"fault {spec['kind']} {','.join(spec['target'])}".strip())
        inject_fault(ctx, spec)
    progress("observing")
    remaining = start + observe_s - time.monotonic()
    if remaining > 0:
        time.sleep(remaining)
    window.close()


def log_clocks(log: EventLog, samples: int = 9) -> None:
    """The wall clock beside the monotonic one, from the tightest of a few paired reads:
    captures are stamped in wall time, events in monotonic time."""
    best = None
    for _ in range(samples):
        mono = time.monotonic_ns()
        wall = time.time_ns()
        after = time.monotonic_ns()
        if best is None or after - mono < best[2]:
            best = (mono, wall, after - mono)
    log.emit(CLOCKS, ts=best[0], wall_ns=best[1], spread_ns=best[2])


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
