"""``caslab bench failover``: the SDN NLB's two dataplanes side by side, small and large.

One invocation runs the same poweroff under ``nlb.dataplane = switch`` and
``controller``, at a small size (48 concurrent sessions, the default topology) and at a
site's size (1,000 sessions over 16 CAS, ``experiments/scale.toml``), each as a normal
experiment in its own result folder, and prints, per dataplane and size: reconnect p50 /
p99 with n beside the affected and collateral sessions, the 95 % CI of the mean, the
goodput dip of unaffected sessions, CPU idle and whether the run was trustworthy, and the
median phase split of a reconnect. Speed is measured here, never asserted in tests.

Fair by construction: the two dataplanes alternate repetition by repetition
(``experiment.order = "interleaved"``), so neither gets the machine's quiet minutes, and
every size runs at least ``MIN_REPS`` repetitions, so each mean has a confidence interval
(Student's t over repetitions needs two; three make it worth reading).
"""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

from caslab import runner, spec as spec_mod, system
from caslab.metrics import PHASES

MIN_REPS = 3
SIZES = {
    "48": ("default", ['experiment.modes=["sdn-nlb"]', "clients.sessions_per_host=24", "probe.capture=false"], 5),
    "1000": ("scale", ['experiment.modes=["sdn-nlb"]'], MIN_REPS),
}
DATAPLANES = ["switch", "controller"]


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


def row(size: str, analysis, scenario) -> dict:
    fault = scenario.faults[0]
    r = fault.reconnect_ms
    return {"size": size, "dataplane": scenario.params.get("nlb.dataplane"), "n": r.n, "p50": r.p50, "p99": r.p99,
            "ci95": r.ci95_of_repetition_means, "mean": r.mean_of_repetitions, "affected": fault.affected,
            "collateral": fault.collateral, "repetitions": fault.repetitions,
            "unrecovered": fault.unrecovered, "dip_unaffected": scenario.goodput.get("dip_unaffected"),
            "cpu_idle": scenario.cpu_idle_pct, "trusted": scenario.trustworthy,
            "phases": {p: fault.phases_ms.get(p) for p in PHASES}, "folder": str(analysis.run_dir)}


def show(rows: list[dict]) -> str:
    head = (f"{'sessions':>8} {'dataplane':10} {'reps':>4} {'affected':>8} {'collat':>6} {'n':>4} {'p50 ms':>8} "
            f"{'p99 ms':>8} {'mean 95% CI':>17} "
            f"{'unrec':>5} {'dip':>5} {'idle%':>6} {'trusted':>7}  phases (median ms: noticed/saw/connected/logon/op)")
    lines = [head]
    for r in rows:
        ci = "-" if not r["ci95"] else f"[{r['ci95'][0]:g}, {r['ci95'][1]:g}]"
        fmt = lambda v: "-" if v is None else f"{v:g}"  # noqa: E731
        phases = "/".join(fmt(r["phases"][p]) for p in PHASES)
        lines.append(f"{r['size']:>8} {r['dataplane'] or '-':10} {r['repetitions']:>4} {r['affected']:>8} "
                     f"{r['collateral']:>6} {r['n']:>4} {fmt(r['p50']):>8} {fmt(r['p99']):>8} "
                     f"{ci:>17} {r['unrecovered']:>5} {fmt(r['dip_unaffected']):>5} {fmt(r['cpu_idle']):>6} "
                     f"{'yes' if r['trusted'] else 'NO':>7}  {phases}")
    return "\n".join(lines)


def main_cli(sizes: list[str], reps: int | None, out: str | None) -> int:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(out) if out else runner.results_dir() / f"bench-failover-{stamp}"
    try:
        planned = specs(sizes, reps)
    except BenchError as exc:
        print(f"caslab bench failover: {exc}", file=sys.stderr)
        return 2
    rows = []
    for size, spec, path in planned:
        analysis = runner.run(spec, path, base / f"{size}-sessions")
        for scenario in analysis.scenarios:
            rows.append(row(size, analysis, scenario))
    text = show(rows)
    (base / "bench.txt").write_text(text + "\n")
    system.give_to_invoking_user(str(base))
    print(text)
    print(f"\nfolders: {base}")
    return 0
