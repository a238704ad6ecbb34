"""``caslab bench failover`` and ``caslab bench floor``: the SDN NLB's two dataplanes side
by side, from one idle session up to a large site.

``bench floor`` measures the lab's own floor: one session on an otherwise idle lab (two
CAS), its CAS powered off (``@busiest``: whichever serves it), ``FLOOR_REPS`` times per
dataplane. It prints the one reconnect (median over repetitions, with its phases) and the
steady figures before the fault: the datapath round trip of a SYN probe through the VIP,
an application probe (resolve, connect, logon, one operation) and one operation.

``bench failover`` runs the floor first, then the same poweroff under ``nlb.dataplane =
switch`` and ``controller`` at each size asked for (48 sessions, the default topology;
1,000 over 16 CAS, ``experiments/scale.toml``; 5,000 over 32 CAS,
``experiments/scale-5000.toml``), each as a normal experiment in its own result folder,
and prints, per dataplane and size: reconnect p50 / p99 with n beside the affected and
collateral sessions, p99 as a multiple of the floor (the same dataplane's one-session
reconnect), the 95 % CI of the mean, the goodput dip of unaffected sessions, CPU idle and
whether the run was trustworthy, and the median phase split of a reconnect. Speed is
measured here, never asserted in tests. A size whose lab never became ready is reported with
its reason (its folder keeps the raw events) and the bench goes on; the exit status is 1.

Fair by construction: the two dataplanes alternate repetition by repetition
(``experiment.order = "interleaved"``), so neither gets the machine's quiet minutes, and
every size runs at least ``MIN_REPS`` repetitions, so each mean has a confidence interval
(Student's t over repetitions needs two; three make it worth reading).
"""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

from caslab.results import analysis as analysis_mod

from caslab.run import runner

from caslab.spec import experiment as spec_mod

from caslab.base import system
from caslab.results.metrics import PHASES
from caslab.results.metrics.floor import idle_floor
from caslab.network.netlab import LabError

MIN_REPS = 3
SIZES = {
    # the default experiment's 48 busy sessions, on the network the scale specs use (back end, AF_XDP ports)
    "48": ("default", ['experiment.modes=["sdn-nlb"]', "clients.sessions_per_host=24", "probe.capture=false",
                       "topology.backend_network=true", 'topology.switch_ports="afxdp"'], 5),
    "1000": ("scale", ['experiment.modes=["sdn-nlb"]'], MIN_REPS),
    "5000": ("scale-5000", ['experiment.modes=["sdn-nlb"]'], MIN_REPS),
}
DATAPLANES = ["switch", "controller"]
FLOOR_REPS = 10  # one affected session per repetition: ten give the floor's median
FLOOR_OVERRIDES = ['experiment.modes=["sdn-nlb"]', "experiment.name=bench-floor", "experiment.order=interleaved",
                   "topology.cas=2", "topology.client_hosts=1", "clients.sessions_per_host=1", "probe.capture=false",
                   "timing.warmup_s=1.0", "timing.observe_s=4.0"]


def fmt(value) -> str:
    """A figure as the tables print it: ``-`` when there is none."""
    return "-" if value is None else f"{value:g}"


class BenchError(ValueError):
    """The bench was asked for something it cannot measure fairly."""


def specs(sizes: list[str], reps: int | None) -> list[tuple[str, dict, Path]]:
    """The bench's experiments: a shipped spec, the bench's overrides, both dataplanes
    alternating repetition by repetition, at least MIN_REPS repetitions each."""
    if reps is not None and reps < MIN_REPS:
        raise BenchError(f"--reps {reps}: the bench needs at least {MIN_REPS} repetitions per size and dataplane "
                         f"(a confidence interval over repetitions)")
    out = []
    for size in sizes:
        name, overrides, default_reps = SIZES[size]
        overrides = overrides + [f"experiment.name=bench-failover-{size}", "experiment.order=interleaved",
                                 f"experiment.repetitions={reps or default_reps}"]
        path = spec_mod.resolve_path(name)
        raw = spec_mod.apply_overrides(spec_mod.tomllib.loads(path.read_text()), overrides)
        raw["sweep"] = {"nlb.dataplane": list(DATAPLANES)}
        out.append((size, spec_mod.validate(raw, str(path)), path))
    return out


def floor_spec(reps: int | None) -> tuple[dict, Path]:
    """One session, two CAS, the session's own CAS powered off 2 s into the window."""
    if reps is not None and reps < MIN_REPS:
        raise BenchError(f"--reps {reps}: the floor needs at least {MIN_REPS} repetitions per dataplane")
    path = spec_mod.resolve_path("default")
    raw = spec_mod.apply_overrides(spec_mod.tomllib.loads(path.read_text()),
                                   FLOOR_OVERRIDES + [f"experiment.repetitions={reps or FLOOR_REPS}"])
    raw["faults"] = [{"kind": "poweroff", "target": "@busiest", "at_s": 2.0}]
    raw["sweep"] = {"nlb.dataplane": list(DATAPLANES)}
    return spec_mod.validate(raw, f"{path} (bench floor)"), path


def floor_rows(analysis) -> dict[str, dict]:
    """Per dataplane: the one session's reconnect over repetitions, and the idle figures."""
    by_run: dict[tuple[str, int], list[dict]] = {key: [] for key in analysis.runs}
    for e in analysis_mod.load_events(analysis.run_dir):
        by_run.setdefault((e.get("scenario", ""), e.get("rep", 0)), []).append(e)
    out = {}
    for scenario in analysis.scenarios:
        runs = [events for (sid, _), events in sorted(by_run.items()) if sid == scenario.id]
        fault = scenario.faults[0]
        dataplane = scenario.params.get("nlb.dataplane")
        out[dataplane] = {"dataplane": dataplane, "n": fault.reconnect_ms.n, "p50": fault.reconnect_ms.p50,
                          "max": fault.reconnect_ms.max, "affected": fault.affected, "unrecovered": fault.unrecovered,
                          "phases": {p: fault.phases_ms.get(p) for p in PHASES}, "idle": idle_floor(runs),
                          "cpu_idle": scenario.cpu_idle_pct, "trusted": scenario.trustworthy,
                          "folder": str(analysis.run_dir)}
    return out


def show_floor(floor: dict[str, dict]) -> str:
    lines = ["floor: one session on an idle lab of two CAS, its own CAS powered off (n: repetitions recovered)",
             f"{'dataplane':10} {'n':>3} {'reconnect p50':>13} {'max':>7} {'unrec':>5}  phases (noticed/saw/connected/"
             f"logon/op)      datapath RTT   app probe   one op   {'idle%':>6} {'trusted':>7}"]
    for r in floor.values():
        idle = r["idle"]
        steady = "   ".join(f"{fmt(idle[k]['median']):>8} (n {idle[k]['n']})" for k in
                           ("datapath_rtt_ms", "app_probe_ms", "op_ms"))
        lines.append(f"{r['dataplane'] or '-':10} {r['n']:>3} {fmt(r['p50']):>13} {fmt(r['max']):>7} "
                     f"{r['unrecovered']:>5}  {'/'.join(fmt(r['phases'][p]) for p in PHASES):30} {steady} "
                     f"{fmt(r['cpu_idle']):>6} {'yes' if r['trusted'] else 'NO':>7}")
    return "\n".join(lines)


def times_floor(row: dict, floor: dict[str, dict]) -> float | None:
    """A size's p99 as a multiple of the same dataplane's one-session reconnect (median)."""
    base = floor.get(row["dataplane"], {}).get("p50")
    return None if row["p99"] is None or not base else round(row["p99"] / base, 1)


def row(size: str, analysis, scenario) -> dict:
    fault = scenario.faults[0]
    r = fault.reconnect_ms
    return {"size": size, "dataplane": scenario.params.get("nlb.dataplane"), "n": r.n, "p50": r.p50, "p99": r.p99,
            "ci95": r.ci95_of_repetition_means, "mean": r.mean_of_repetitions, "affected": fault.affected,
            "collateral": fault.collateral, "repetitions": fault.repetitions,
            "unrecovered": fault.unrecovered, "dip_unaffected": scenario.goodput.get("dip_unaffected"),
            "cpu_idle": scenario.cpu_idle_pct, "trusted": scenario.trustworthy,
            "phases": {p: fault.phases_ms.get(p) for p in PHASES}, "load": fault.recovery_load,
            "folder": str(analysis.run_dir)}


def show_load(rows: list[dict]) -> str:
    """Where a size's reconnect time goes: the cores during the recovery (metrics.load)."""
    lines = ["recovery load (median over repetitions; span: the fault to the last reconnect; before: as long "
             "just before the fault; cpu-bound: the added CPU on the cores left spare)",
             f"{'sessions':>8} {'dataplane':10} {'span ms':>8} {'busy % before>during':>21} "
             f"{'CPU pressure % before>during':>29} {'added CPU ms':>12} {'per reconnect':>13} {'cpu-bound ms':>12}"]
    for r in rows:
        load = r.get("load") or {}
        lines.append(f"{r['size']:>8} {r['dataplane'] or '-':10} {fmt(load.get('span_ms')):>8} "
                     f"{fmt(load.get('busy_before_pct')) + ' > ' + fmt(load.get('busy_pct')):>21} "
                     f"{fmt(load.get('pressure_before_pct')) + ' > ' + fmt(load.get('pressure_pct')):>29} "
                     f"{fmt(load.get('extra_cpu_ms')):>12} {fmt(load.get('extra_cpu_ms_per_reconnect')):>13} "
                     f"{fmt(load.get('cpu_bound_ms')):>12}")
    return "\n".join(lines)


def show(rows: list[dict]) -> str:
    head = (f"{'sessions':>8} {'dataplane':10} {'reps':>4} {'affected':>8} {'collat':>6} {'n':>4} {'p50 ms':>8} "
            f"{'p99 ms':>8} {'xfloor':>6} {'mean 95% CI':>17} "
            f"{'unrec':>5} {'dip':>5} {'idle%':>6} {'trusted':>7}  phases (median ms: noticed/saw/connected/logon/op)")
    lines = [head]
    for r in rows:
        ci = "-" if not r["ci95"] else f"[{r['ci95'][0]:g}, {r['ci95'][1]:g}]"
        phases = "/".join(fmt(r["phases"][p]) for p in PHASES)
        lines.append(f"{r['size']:>8} {r['dataplane'] or '-':10} {r['repetitions']:>4} {r['affected']:>8} "
                     f"{r['collateral']:>6} {r['n']:>4} {fmt(r['p50']):>8} {fmt(r['p99']):>8} "
                     f"{fmt(r.get('x_floor')):>6} "
                     f"{ci:>17} {r['unrecovered']:>5} {fmt(r['dip_unaffected']):>5} {fmt(r['cpu_idle']):>6} "
                     f"{'yes' if r['trusted'] else 'NO':>7}  {phases}")
    return "\n".join(lines)


def main_cli(sizes: list[str], reps: int | None, out: str | None, floor_only: bool = False) -> int:
    """Both benches: the floor, then (unless ``floor_only``) each size; every spec is
    checked before the first network is built."""
    what = "floor" if floor_only else "failover"
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(out) if out else runner.results_dir() / f"bench-{what}-{stamp}"
    try:
        planned = [] if floor_only else specs(sizes, reps)
        floor_planned = floor_spec(reps if floor_only else None)
    except BenchError as exc:
        print(f"caslab bench {what}: {exc}", file=sys.stderr)
        return 2
    failed: list[str] = []
    floor_run = measured("floor", lambda: runner.run(floor_planned[0], floor_planned[1], base / "floor"), failed)
    floor = floor_rows(floor_run) if floor_run else {}
    rows = []
    for size, spec, path in planned:
        analysis = measured(f"{size} sessions", lambda: runner.run(spec, path, base / f"{size}-sessions"), failed)
        for scenario in analysis.scenarios if analysis else []:
            rows.append(row(size, analysis, scenario))
            rows[-1]["x_floor"] = times_floor(rows[-1], floor)
    text = "\n\n".join(part for part in (show_floor(floor) if floor else "", show(rows) if rows else "",
                                          show_load(rows) if rows else "",
                                          "\n".join(failed)) if part)
    base.mkdir(parents=True, exist_ok=True)
    (base / "bench.txt").write_text(text + "\n")
    system.give_to_invoking_user(str(base))
    print(text)
    print(f"\nfolders: {base}")
    return 1 if failed else 0


def measured(what: str, run, failed: list[str]):
    """One size's experiment; a repetition that fails (the lab never became ready, a switch
    never connected) ends that size only: the bench says so, with the reason, and goes on
    to the next size (the failed size's folder keeps its raw events)."""
    try:
        return run()
    except LabError as exc:
        failed.append(f"{what}: did not complete: {exc}")
        return None
