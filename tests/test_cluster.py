"""A cluster run for real, on one machine: a Dask scheduler and two lab workers started as
real processes on loopback (every socket on 127.0.0.1), a spec of two scenarios x two
repetitions run through them while one worker is killed mid-repetition, and the merged
result compared with the same spec run locally. Ctrl-C on the runner cancels the tasks
and the workers tear their labs down. Both workers share this machine's lab lock, so
they take turns; the test shows the mechanics, not a speed-up."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from caslab.run import runner

from caslab.spec import experiment as spec_mod
from tests.conftest import free_tcp_port
from labcommon.catalogue import SCENARIO_START
from labcommon.events import read_events
from tests.conftest import ROOT, lab_residue

pytestmark = pytest.mark.require_root

# Two scenarios whose affected sessions the network decides the same way every time:
# direct (every profile names cas1) and the SDN NLB hashing each session's own source
# address (single affinity), cas1 powered off.
SPEC = """
[experiment]
name = "cluster"
repetitions = 2
modes = ["sdn-nlb", "direct"]
[topology]
cas = 2
mailboxes = 1
client_hosts = 1
[clients]
sessions_per_host = 4
distinct_source_ips = true
[nlb]
affinity = "single"
[timing]
warmup_s = 1.0
observe_s = 3.0
[[faults]]
kind = "poweroff"
target = "cas1"
at_s = 0.5
"""


class Cluster:
    """A scheduler and named workers, each a real process in its own session."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.address = f"tcp://127.0.0.1:{free_tcp_port()}"
        self.scratch = folder / "scratch"
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, argv: list[str]) -> None:
        env = {**os.environ, "CASLAB_SCRATCH": str(self.scratch), "CASLAB_LOCK_WAIT_S": "3600"}
        log = open(self.folder / f"{name}.log", "wb")
        self.procs[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            cwd=ROOT, env=env, start_new_session=True)
        log.close()

    def up(self, workers: list[str]) -> None:
        port = self.address.rsplit(":", 1)[1]
        self.start("scheduler", [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                                 "--port", port, "--dashboard-address", "127.0.0.1:0"])
        for name in workers:
            self.start(name, [sys.executable, "-m", "caslab.commands.cli", "worker", "--scheduler", self.address,
                              "--host", "127.0.0.1", "--name", name, "--no-nanny"])
        from distributed import Client

        with Client(self.address, timeout=30, set_as_default=False) as client:
            client.wait_for_workers(len(workers), timeout=90)

    def kill(self, name: str) -> None:
        os.kill(self.procs[name].pid, signal.SIGKILL)
        self.procs[name].wait(10)

    def down(self) -> None:
        """SIGTERM to the workers at once (each waits for its repetition's teardown), then
        to the scheduler (a worker whose scheduler is gone first tries to reach it again)."""
        workers = [p for n, p in self.procs.items() if n != "scheduler"]
        for group in (workers, [self.procs["scheduler"]]):
            alive = [p for p in group if p.poll() is None]
            for proc in alive:
                proc.terminate()
            deadline = time.monotonic() + 60
            for proc in alive:
                try:
                    proc.wait(max(deadline - time.monotonic(), 1))
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)

    def log(self, name: str) -> str:
        return (self.folder / f"{name}.log").read_text(errors="replace")[-3000:]


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path)
    try:
        c.up(["w1", "w2"])
        yield c
    finally:
        c.down()


def write_spec(tmp_path: Path) -> Path:
    path = tmp_path / "cluster.toml"
    path.write_text(SPEC)
    return path


def run_cli(args: list[str], on_line=None, timeout_s: float = 300, env: dict | None = None) -> tuple[int, str, str]:
    proc = subprocess.Popen([sys.executable, "-m", "caslab.commands.cli", "run", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})
    seen = []
    deadline = time.monotonic() + timeout_s
    for line in proc.stderr:
        seen.append(line)
        if on_line:
            on_line(proc, line)
        assert time.monotonic() < deadline, "".join(seen)
    out = proc.stdout.read()
    return proc.wait(30), out, "".join(seen)


def sessions(run_dir: Path) -> tuple[list[str], dict[tuple[str, str], dict[str, str]]]:
    with open(run_dir / "sessions.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        rows = {(r["scenario"], r["repetition"], r["session"]): r for r in reader}
        return reader.fieldnames, rows


def affected_sets(rows) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for (scenario, rep, session), row in rows.items():
        out.setdefault((scenario, rep), set())
        if row["affected"] == "true":
            out[(scenario, rep)].add(session)
    return out


def test_cluster_sweep_with_a_killed_worker_matches_the_local_run(tmp_path, no_residue, cluster):
    path = write_spec(tmp_path)
    killed: dict[str, str] = {}

    def kill_the_first_lab_holder(proc, line):
        # The first repetition that is warming up holds the lab: kill its worker outright.
        if not killed and "warming up" in line:
            match = re.search(r"\[(\d+)/4\] (.+?) rep (\d) @(\S+) ", line)
            assert match, line
            killed.update(index=match.group(1), label=match.group(2), rep=match.group(3), worker=match.group(4))
            cluster.kill(killed["worker"])

    # The runner claims the kernel datapath (the workers have the userspace one): with
    # --allow-mismatch the run goes on and records that difference beside every repetition.
    code, out, err = run_cli([str(path), "--cluster", cluster.address, "--out", str(tmp_path / "cluster"),
                              "--allow-mismatch"], kill_the_first_lab_holder, env={"CASLAB_DATAPATH": "kernel"})
    assert code == 0, err + "\n" + cluster.log("w1") + cluster.log("w2")
    assert killed, err
    survivor = ({"w1", "w2"} - {killed["worker"]}).pop()
    assert re.search(rf"\[{killed['index']}/4\] .* @{survivor} .*re-run \(attempt 2; {killed['worker']} left", err), err
    assert "lab worker(s) on 1 machine(s)" in err and "results:" in out

    run_dir = tmp_path / "cluster"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["complete"] is True and not manifest["failures"]
    runs = manifest["cluster"]["runs"]
    assert sorted((r["scenario"], r["rep"]) for r in runs) == [("s1-sdn-nlb", 0), ("s1-sdn-nlb", 1),
                                                              ("s2-direct", 0), ("s2-direct", 1)]
    rerun = [r for r in runs if len(r["attempts"]) > 1]
    assert len(rerun) == 1 and rerun[0]["attempts"] == [killed["worker"], survivor]
    assert rerun[0]["worker"] == survivor
    assert all(r["differences"] == ["datapath: runner kernel, worker user"] for r in runs), runs
    assert manifest["cluster"]["allow_mismatch"] is True
    assert manifest["cluster"]["lost"] == [{"scenario": rerun[0]["scenario"], "rep": rerun[0]["rep"],
                                            "workers": [killed["worker"]]}]
    assert set(manifest["cluster"]["workers"]) >= {survivor}
    # The killed attempt left nothing in the result: one scenario start per repetition.
    starts = Counter((e["scenario"], e["rep"]) for e in read_events(run_dir / "events.jsonl") if e["ev"] == SCENARIO_START)
    assert starts == Counter({("s1-sdn-nlb", 0): 1, ("s1-sdn-nlb", 1): 1, ("s2-direct", 0): 1, ("s2-direct", 1): 1})
    assert sorted(p.name for p in (run_dir / "raw").iterdir()) == ["s1-sdn-nlb-r1", "s1-sdn-nlb-r2",
                                                                    "s2-direct-r1", "s2-direct-r2"]
    assert (run_dir / "raw" / "s1-sdn-nlb-r1" / "runner.jsonl").stat().st_size > 0
    assert (run_dir / "report.html").stat().st_size > 0

    # The same spec on this machine, the local way.
    spec, _ = spec_mod.load(str(path))
    local_dir = runner.run_experiment(spec, path, tmp_path / "local")
    for name in ("summary.csv", "sessions.csv"):
        with open(run_dir / name) as a, open(local_dir / name) as b:
            assert a.readline() == b.readline(), name  # same columns
    fields, cluster_rows = sessions(run_dir)
    _, local_rows = sessions(local_dir)
    assert sorted(cluster_rows) == sorted(local_rows) and len(local_rows) == 2 * 2 * 4
    assert affected_sets(cluster_rows) == affected_sets(local_rows)
    assert affected_sets(local_rows)[("s2-direct", "0")] == {f"cl1-s{i}" for i in range(4)}
    a = json.loads((run_dir / "summary.json").read_text())["scenarios"]
    b = json.loads((local_dir / "summary.json").read_text())["scenarios"]
    assert [(s["id"], s["faults"][0]["sessions"], s["faults"][0]["affected"]) for s in a] == \
           [(s["id"], s["faults"][0]["sessions"], s["faults"][0]["affected"]) for s in b]
    assert not list(cluster.scratch.glob("caslab-task-*")), "a worker's task folder was left behind"


def test_a_worker_unlike_the_runner_is_refused_before_any_lab(tmp_path, no_residue, cluster):
    path = write_spec(tmp_path)
    code, _, err = run_cli([str(path), "--cluster", cluster.address, "--out", str(tmp_path / "out")],
                           env={"CASLAB_DATAPATH": "kernel"})
    assert code == 2, err
    assert re.search(r"caslab: refused: worker w[12] \(\S+\) differs from this machine", err), err
    assert "datapath: runner kernel, worker user" in err and "--allow-mismatch" in err
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["complete"] is False and manifest["cluster"]["runs"] == []
    assert "repetitions submitted" not in err


def test_ctrl_c_on_the_runner_cancels_and_workers_tear_down(tmp_path, no_residue, cluster):
    path = write_spec(tmp_path)
    sent = []

    def interrupt_while_observing(proc, line):
        if not sent and "warming up" in line:
            proc.send_signal(signal.SIGINT)
            sent.append(line)

    code, _, err = run_cli([str(path), "--cluster", cluster.address, "--out", str(tmp_path / "out")],
                           interrupt_while_observing)
    assert sent, err
    assert code == 130, err
    assert "interrupted: cancelling 4 tasks" in err
    assert "cancelled; its lab was torn down" in err, err
    assert "no word of teardown" not in err, err
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["complete"] is False
    assert not lab_residue(str(tmp_path))
    for name in ("w1", "w2"):  # the workers stay up for the next run
        assert cluster.procs[name].poll() is None, cluster.log(name)


def repetition_pids(scratch: Path) -> list[int]:
    """The repetition processes of this test's workers (their task folders are in scratch)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "caslab.run.repetition" in cmd and str(scratch) in cmd:
            found.append(int(proc.name))
    return found


def test_a_repetition_killed_outright_fails_the_run_and_its_lab_is_swept(tmp_path, no_residue, cluster):
    path = write_spec(tmp_path)
    killed = []

    def kill_the_repetition(proc, line):
        if not killed and "warming up" in line:
            pids = repetition_pids(cluster.scratch)
            assert len(pids) == 1, pids
            os.kill(pids[0], signal.SIGKILL)  # no teardown: its lab's processes and bridge stay behind
            killed.append(pids[0])

    code, _, err = run_cli([str(path), "--cluster", cluster.address, "--out", str(tmp_path / "out"),
                            "--set", 'experiment.modes=["direct"]', "--set", "experiment.repetitions=1"],
                           kill_the_repetition)
    assert killed and code == 1, err
    assert "the repetition's process ended with status -9 and no result" in err
    assert re.search(r"what its lab left was removed on \S+ as caslab cleanup would \([1-9]\d* processes, "
                     r"[1-9]\d* bridges and links\)", err), err
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["complete"] is False and len(manifest["failures"]) == 1
    assert not lab_residue(str(tmp_path))
