"""The ``caslab`` command: argument parsing and printing only; every number comes from
caslab.results.analysis / caslab.results.metrics, every action from the module that owns it."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def _interrupt_on_sigterm() -> None:
    from caslab.base import interrupts

    interrupts.install()


def cmd_doctor(args) -> int:
    from caslab.network import doctor

    return doctor.run()


def cmd_run(args) -> int:
    from caslab.network import doctor
    from caslab.run import runner
    from caslab.spec import experiment as spec_mod

    try:
        spec, path = spec_mod.load(args.spec, args.set)
    except spec_mod.SpecError as exc:
        print(f"caslab: bad spec: {exc}", file=sys.stderr)
        return 2
    if args.check:
        print(json.dumps(spec, indent=2, sort_keys=True))
        return 0
    if args.allow_mismatch and not args.cluster:
        print("caslab: --allow-mismatch only applies to a run with --cluster", file=sys.stderr)
        return 2
    failed = [] if args.cluster else [c for c in doctor.checks() if c.required and not c.ok]
    if failed:
        for check in failed:
            print(f"caslab: cannot run: {check.name}: {check.detail}", file=sys.stderr)
        return 3
    from caslab.commands.cluster_facts import ClusterRefused
    from caslab.network.netlab import LabError

    execute = runner.run_locally
    if args.cluster:
        from caslab.commands.cluster import ClusterExecutor

        execute = ClusterExecutor(args.cluster, allow_mismatch=args.allow_mismatch)
    try:
        analysis = runner.run(spec, path, Path(args.out) if args.out else None, force=args.force, execute=execute)
    except ClusterRefused as exc:
        print(f"caslab: refused: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("caslab: interrupted; the lab was torn down and the events so far were kept", file=sys.stderr)
        return 130
    except LabError as exc:
        print(f"caslab: run failed: {exc} (the lab was torn down; the raw events are kept)", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - one clear line, never a traceback, for any failure of a run
        print(f"caslab: run failed: {type(exc).__name__}: {exc} (the lab was torn down; the raw events are kept)",
              file=sys.stderr)
        return 1
    print(f"\nresults: {analysis.run_dir}")
    print_table(analysis)
    print(f"report:  {analysis.run_dir / 'report.html'}")
    return 0 if analysis.complete else 1


def print_table(analysis) -> None:
    """The results tables that have rows (an HTTP-only run prints no empty Outlook table)."""
    from caslab.results.columns import (
        ADDRESS_COLUMNS, HTTP_COLUMNS, plain_table, shows_addresses, terminal_table, with_sessions,
    )

    tables = []
    if with_sessions(analysis.rows):
        tables.append(terminal_table(with_sessions(analysis.rows)))
    if shows_addresses(analysis.scenarios):
        tables.append("served users by the address their server name resolved to:\n"
                      + plain_table(ADDRESS_COLUMNS, [row for s in analysis.scenarios for row in s.by_address]))
    if with_sessions(analysis.http_rows):
        tables.append("HTTP protocols\n" + terminal_table(with_sessions(analysis.http_rows), HTTP_COLUMNS))
    print("\n\n".join(tables) if tables else "no client session in any scenario")
    for s in analysis.scenarios:
        if not s.trustworthy:
            print(f"UNTRUSTWORTHY {s.label}: {'; '.join(s.untrustworthy_reasons)}")


def cmd_worker(args) -> int:
    from caslab.commands import cluster_worker

    return cluster_worker.main_cli(args)


def cmd_report(args) -> int:
    from caslab.results import report

    run_dir = Path(args.dir)
    if not (run_dir / "events.jsonl").exists() or not (run_dir / "manifest.json").exists():
        print(f"caslab: {run_dir} is not a result folder (needs events.jsonl and manifest.json)", file=sys.stderr)
        return 2
    analysis = report.write_report(run_dir)
    print_table(analysis)
    from caslab.run import runner
    from caslab.base import system

    system.give_to_invoking_user(str(run_dir))
    runner.refresh_index(run_dir)
    return 0


def cmd_up(args) -> int:
    from caslab.run import live

    return live.main_cli(args)


def cmd_fault(args) -> int:
    from caslab.run import live_control

    return live_control.fault_command(args.words)


def cmd_down(args) -> int:
    from caslab.run import live_control

    return live_control.down_command()


def cmd_inspect(args) -> int:
    from caslab.spec import plan_view, experiment as spec_mod

    try:
        spec, path = spec_mod.load(args.spec, args.set)
    except spec_mod.SpecError as exc:
        print(f"caslab: bad spec: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(plan_view.inspect(spec, str(path)))
    return 0


def cmd_list(args) -> int:
    from caslab.spec import experiment as spec_mod

    names = spec_mod.spec_names()
    width = max((len(n) for n in names), default=0)
    for name in names:
        print(f"{name.ljust(width)}  {spec_mod.describe(spec_mod.EXPERIMENTS_DIR / f'{name}.toml')}")
    return 0


def cmd_compare(args) -> int:
    from caslab.results import analysis
    from caslab.commands import compare

    for folder in (args.run_a, args.run_b):
        if not (Path(folder) / "events.jsonl").exists() or not (Path(folder) / "manifest.json").exists():
            print(f"caslab: {folder} is not a result folder (needs events.jsonl and manifest.json)", file=sys.stderr)
            return 2
    a, b = (analysis.analyze(Path(f), with_captures=False) for f in (args.run_a, args.run_b))
    print(compare.render(compare.compare(a, b), args.run_a, args.run_b))
    return 0


def cmd_cleanup(args) -> int:
    from caslab.network import cleanup

    return cleanup.run()


def cmd_soak(args) -> int:
    from caslab.commands import soak
    from caslab.spec import experiment as spec_mod

    try:
        spec_mod.load(args.spec, args.set)
    except spec_mod.SpecError as exc:
        print(f"caslab: bad spec: {exc}", file=sys.stderr)
        return 2
    return soak.main_cli(args.count, args.spec, args.set, args.out)


def cmd_nlb(args) -> int:
    from caslab.run import live_control
    from caslab.network import nlb_client

    return nlb_client.run(args) if args.port is not None else live_control.nlb_command(args)


def cmd_bench(args) -> int:
    if args.what in ("failover", "floor"):
        from caslab.commands import bench_failover

        return bench_failover.main_cli(args.sizes, args.reps, args.out, floor_only=args.what == "floor")
    from caslab.commands import bench

    return bench.main_cli(args.seconds, args.rounds)


def version() -> str:
    from importlib.metadata import PackageNotFoundError, version as dist_version

    try:
        return dist_version("caslab")
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="caslab", description="Exchange 2010 CAS array failover lab")
    parser.add_argument("--version", action="version", version=f"caslab {version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the specs in experiments/ with their descriptions").set_defaults(func=cmd_list)
    inspect = sub.add_parser("inspect", help="print what a spec would build (hosts, addresses, arrays, "
                                            "databases, faults) without building anything")
    inspect.add_argument("spec", nargs="?", help="a spec file, or the name of one in experiments/")
    inspect.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    inspect.set_defaults(func=cmd_inspect)
    up = sub.add_parser("up", help="a live lab: build one scenario, start everything, open the Mininet CLI; "
                                   "leave it (exit, Ctrl-D, Ctrl-C, SIGTERM) to tear down")
    up.add_argument("spec", nargs="?", help="a spec file, or the name of one in experiments/ (default: default)")
    up.add_argument("--mode", help="the HA mode (default: sdn-nlb if the spec has it, else its first mode)")
    up.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    up.add_argument("--out", help="result folder (default results/live-<mode>-<timestamp>)")
    up.add_argument("--force", action="store_true", help="empty an existing --out folder first (a caslab result folder only)")
    up.add_argument("--no-cli", action="store_true", help="no CLI: stay up until SIGTERM, Ctrl-C or caslab down")
    up.add_argument("--no-clients", action="store_true", help="start no client sessions")
    up.set_defaults(func=cmd_up)
    fault = sub.add_parser("fault", help="inject a fault into the live lab now (KIND [TARGET ...] [--key value])")
    fault.add_argument("words", nargs=argparse.REMAINDER, metavar="KIND [TARGET ...] [--key value ...]",
                       help="e.g. poweroff cas1 | drain cas2 --deadline_s 5 | dag-switchover --database DB1 --to mbx2")
    fault.set_defaults(func=cmd_fault)
    sub.add_parser("down", help="tear the live lab down (as SIGTERM to caslab up)").set_defaults(func=cmd_down)
    compare = sub.add_parser("compare", help="two result folders side by side: per scenario both runs' figures "
                                             "and the difference of mean reconnect times with its 95 %% CI")
    compare.add_argument("run_a")
    compare.add_argument("run_b")
    compare.set_defaults(func=cmd_compare)
    sub.add_parser("doctor", help="check that this machine can run the lab").set_defaults(func=cmd_doctor)
    run = sub.add_parser("run", help="run an experiment (default: experiments/default.toml)")
    run.add_argument("spec", nargs="?", help="a spec file, or the name of one in experiments/")
    run.add_argument("--out", help="result folder (default results/<experiment>-<timestamp>)")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override a spec setting, e.g. --set nlb.fast_fail=false (repeatable)")
    run.add_argument("--check", action="store_true", help="validate the spec, print it resolved, and stop")
    run.add_argument("--force", action="store_true", help="empty an existing --out folder first (a caslab result folder only)")
    run.add_argument("--cluster", metavar="tcp://HOST:8786",
                     help="run the repetitions on the lab workers of this Dask scheduler (caslab worker), "
                          "merged into one result folder here")
    run.add_argument("--allow-mismatch", action="store_true",
                     help="with --cluster: accept workers whose commit, Python, packages or datapath differ from "
                          "this machine's, recording each difference in the manifest")
    run.set_defaults(func=cmd_run)
    worker = sub.add_parser("worker", help="serve this machine's lab to a cluster run: a Dask worker with one "
                                           "'lab' resource (run as root, one per lab machine)")
    worker.add_argument("--scheduler", required=True, metavar="tcp://HOST:8786")
    worker.add_argument("--name", help="the worker's name in progress lines and the manifest (default: Dask's)")
    worker.add_argument("--host", help="the address to listen on (default: Dask's choice); 127.0.0.1 for one machine")
    worker.add_argument("--no-nanny", action="store_true", help="no Dask nanny process restarting the worker")
    worker.add_argument("--dashboard", action="store_true", help="serve the worker's own Dask dashboard too")
    worker.set_defaults(func=cmd_worker)
    rep = sub.add_parser("report", help="regenerate summary, CSV, plots and reports from a run's events")
    rep.add_argument("dir")
    rep.set_defaults(func=cmd_report)
    clean = sub.add_parser("cleanup", help="remove what a hard-killed run left (its own pids and bridge names)")
    clean.set_defaults(func=cmd_cleanup)
    bench = sub.add_parser("bench", help="throughput: the SDN NLB's VIP vs straight to a CAS (iperf3); "
                                          "floor: one session on an idle lab, its CAS killed; "
                                          "failover: the floor, then both NLB dataplanes at 48, 1,000 "
                                          "(and 5,000) sessions")
    bench.add_argument("what", nargs="?", choices=("throughput", "failover", "floor"), default="throughput")
    bench.add_argument("--seconds", type=int, default=5, help="throughput: seconds per iperf3 round")
    bench.add_argument("--rounds", type=int, default=3, help="throughput: interleaved rounds")
    bench.add_argument("--sizes", nargs="+", choices=("48", "1000", "5000"), default=["48", "1000"],
                       help="failover: which sizes to run")
    bench.add_argument("--reps", type=int, default=None,
                       help="failover: repetitions per size and dataplane, at least 3 (default: 5 at 48 sessions, "
                            "3 at 1,000 and 5,000); floor: repetitions per dataplane (default 10)")
    bench.add_argument("--out", default=None, help="failover, floor: result folder")
    bench.set_defaults(func=cmd_bench)
    soak = sub.add_parser("soak", help="N short runs back to back, checking after each that nothing is left or leaks")
    soak.add_argument("count", type=int)
    soak.add_argument("spec", nargs="?", default="soak")
    soak.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    soak.add_argument("--out", default=None)
    soak.set_defaults(func=cmd_soak)
    nlb = sub.add_parser("nlb", allow_abbrev=False,  # no `--token` for --token-file: the token never on a command line
                         help="the SDN NLB's admin API: the live lab's (default) or, with --port, a run's")
    nlb.add_argument("--port", type=int, default=None, help="admin API port on 127.0.0.1 (default: the live lab)")
    nlb.add_argument("action", choices=("show", "drain", "rejoin", "down", "up", "affinity"))
    nlb.add_argument("vip", nargs="?")
    nlb.add_argument("member_or_value", nargs="?")
    nlb.add_argument("--deadline", type=float, default=None)
    nlb.add_argument("--token-file", default=None,
                     help="with --port: a 0600 file holding the run's API token (default: $CASLAB_NLB_TOKEN); "
                          "caslab up prints its path")
    nlb.set_defaults(func=cmd_nlb)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    _interrupt_on_sigterm()  # every command that builds a lab tears it down on SIGTERM as on Ctrl-C
    try:
        code = args.func(args)
        sys.stdout.flush()
    except KeyboardInterrupt:
        print("caslab: interrupted; what the lab built was torn down", file=sys.stderr)
        code = 130
    except BrokenPipeError:
        # the reader went away (`caslab run x --check | head`): not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 0
    sys.exit(code)


if __name__ == "__main__":
    main()
