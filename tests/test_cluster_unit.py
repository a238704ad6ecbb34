"""The pure parts of a cluster run: the compatibility check, the task plan, the merge of
what workers return, the ETA, the worker command line. (tests/test_cluster.py runs a real
scheduler and workers.)"""

from __future__ import annotations

import copy
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from caslab.commands import cluster, cluster_facts, cluster_worker

from caslab.run import runner

from caslab.spec import experiment as spec_mod
from caslab.commands.cluster_facts import ClusterRefused
from caslab.network.netlab import LabError
from tests.conftest import ROOT

FACTS = {"host": "lab1", "git": {"commit": "a" * 40, "dirty": False, "diff_sha256": None}, "python": "3.11.2",
         "packages": {"caslab": "0.1.0", "numpy": "1.26.4", "distributed": "2026.8.0"}, "datapath": "kernel"}


def changed(**edits):
    other = copy.deepcopy(FACTS)
    for path, value in edits.items():
        target = other
        *parents, last = path.split("__")
        for p in parents:
            target = target[p]
        target[last] = value
    return other


def test_identical_machines_have_no_difference():
    assert cluster_facts.differences(FACTS, copy.deepcopy(FACTS)) == []
    # the host name, tool versions and the kernel are recorded, never compared
    assert cluster_facts.differences(FACTS, {**FACTS, "host": "lab9", "versions": {"kernel": "6.1"}}) == []


@pytest.mark.parametrize("edits, expected", [
    ({"git__commit": "b" * 40}, f"git commit: runner {'a' * 40}, worker {'b' * 40}"),
    ({"git__dirty": True, "git__diff_sha256": "f" * 64}, "git tree at aaaaaaaaaaaa: runner clean, worker uncommitted changes"),
    ({"python": "3.13.5"}, "python: runner 3.11.2, worker 3.13.5"),
    ({"packages__numpy": "2.0.0"}, "package numpy: runner 1.26.4, worker 2.0.0"),
    ({"datapath": "user"}, "datapath: runner kernel, worker user"),
])
def test_each_difference_is_named(edits, expected):
    found = cluster_facts.differences(FACTS, changed(**edits))
    assert len(found) == 1 and found[0].startswith(expected), found


def test_two_dirty_trees_differ_when_their_diffs_do():
    a = changed(git__dirty=True, git__diff_sha256="1" * 64)
    assert cluster_facts.differences(a, copy.deepcopy(a)) == []
    assert cluster_facts.differences(a, changed(git__dirty=True, git__diff_sha256="2" * 64))


def test_a_package_on_one_side_only_is_a_difference():
    other = copy.deepcopy(FACTS)
    del other["packages"]["numpy"]
    assert cluster_facts.differences(FACTS, other) == ["package numpy: runner 1.26.4, worker absent"]


def test_a_differing_worker_is_refused_unless_allowed():
    worker = changed(python="3.13.5", datapath="user")
    with pytest.raises(ClusterRefused) as info:
        cluster_facts.check(FACTS, worker, "lab2", allow=False)
    text = str(info.value)
    assert "worker lab2 (lab1)" in text and "python: runner 3.11.2, worker 3.13.5" in text
    assert "datapath: runner kernel, worker user" in text and "--allow-mismatch" in text
    assert cluster_facts.check(FACTS, worker, "lab2", allow=True) == cluster_facts.differences(FACTS, worker)


def test_compared_packages_are_what_the_lab_imports():
    packages = cluster_facts.lab_packages()
    for name in ("caslab", "distributed", "mininet", "os-ken", "numpy", "matplotlib", "dask"):
        assert packages.get(name) not in (None, "missing"), name
    assert "pytest" not in packages and "bokeh" not in packages  # extras: not what a repetition runs with


def test_this_machine_is_like_itself():
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout (a copy without .git): there is no commit to name")
    mine = cluster_facts.facts()
    assert mine["git"]["commit"] and isinstance(mine["git"]["dirty"], bool)
    assert cluster_facts.differences(mine, cluster_facts.facts()) == []


SPEC = """
[experiment]
name = "plan"
repetitions = 3
modes = ["sdn-nlb", "direct"]
"""


def test_task_plan_is_the_local_order_with_one_task_per_repetition(tmp_path):
    path = tmp_path / "plan.toml"
    path.write_text(SPEC)
    spec, _ = spec_mod.load(str(path))
    scenarios = spec_mod.scenarios(spec)
    tasks = runner.task_plan(scenarios, runner.scenario_metas(scenarios), 3)
    assert [(t.index, t.scenario_id, t.rep, t.raw_name) for t in tasks] == [
        (1, "s1-sdn-nlb", 0, "s1-sdn-nlb-r1"), (2, "s1-sdn-nlb", 1, "s1-sdn-nlb-r2"), (3, "s1-sdn-nlb", 2, "s1-sdn-nlb-r3"),
        (4, "s2-direct", 0, "s2-direct-r1"), (5, "s2-direct", 1, "s2-direct-r2"), (6, "s2-direct", 2, "s2-direct-r3")]
    assert tasks[3].scenario["mode"] == "direct" and tasks[3].label == "direct"
    json.dumps(tasks[0].scenario)  # what a worker's repetition process reads: plain JSON


def test_task_plan_follows_an_interleaved_order(tmp_path):
    path = tmp_path / "plan.toml"
    path.write_text(SPEC.replace('repetitions = 3', 'repetitions = 2\norder = "interleaved"'))
    spec, _ = spec_mod.load(str(path))
    scenarios = spec_mod.scenarios(spec)
    tasks = runner.task_plan(scenarios, runner.scenario_metas(scenarios), 2, spec["experiment"]["order"])
    assert [(t.index, t.raw_name) for t in tasks] == [(1, "s1-sdn-nlb-r1"), (2, "s2-direct-r1"),
                                                      (3, "s1-sdn-nlb-r2"), (4, "s2-direct-r2")]


def test_eta_shares_the_work_over_the_lab_machines():
    assert cluster.cluster_eta_s(20.0, queued=4, running_elapsed=[], parallel=1) == 80.0
    assert cluster.cluster_eta_s(20.0, queued=4, running_elapsed=[5.0, 30.0], parallel=2) == (15.0 + 0.0 + 80.0) / 2
    assert cluster.cluster_eta_s(20.0, queued=0, running_elapsed=[], parallel=0) == 0.0


def test_workers_group_by_machine_and_need_the_lab_resource():
    workers = {"tcp://10.0.0.5:4001": {"name": "a", "resources": {"lab": 1}},
               "tcp://10.0.0.5:4002": {"name": "b", "resources": {"lab": 1}},
               "tcp://10.0.0.6:4001": {"name": "c", "resources": {"lab": 1}},
               "tcp://10.0.0.7:4001": {"name": "plain", "resources": {}}}
    assert cluster.lab_machines(workers) == {"10.0.0.5": ["a", "b"], "10.0.0.6": ["c"]}


def raw_tar(name: str, files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for member, data in files.items():
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def result(scenario_id="s1-x", rep=0, worker="lab1", events='{"ev":"op","rep":0}\n'):
    return {"scenario_id": scenario_id, "rep": rep, "worker": worker, "host": "h1", "address": "tcp://h1:1",
            "facts": FACTS, "seconds": 12.5, "error": None, "differences": [], "events": events,
            "raw_tar": raw_tar(f"{scenario_id}-r{rep + 1}", {f"{scenario_id}-r{rep + 1}/runner.jsonl": b"{}\n"})}


def test_merge_writes_each_repetition_once(tmp_path):
    manifest = {"cluster": {"workers": {}, "runs": []}}
    events = io.StringIO()
    merge = cluster.Merge(tmp_path, manifest, events)
    assert merge.accept(result(), ["lab2", "lab1"])
    assert not merge.accept(result(worker="lab3", events="SECOND\n"), ["lab3"])  # never counted twice
    assert merge.accept(result(rep=1), ["lab1"])
    assert events.getvalue() == '{"ev":"op","rep":0}\n' * 2
    assert (tmp_path / "raw" / "s1-x-r1" / "runner.jsonl").read_bytes() == b"{}\n"
    assert (tmp_path / "raw" / "s1-x-r2" / "runner.jsonl").exists()
    runs = manifest["cluster"]["runs"]
    assert [(r["scenario"], r["rep"], r["worker"], r["attempts"]) for r in runs] == [
        ("s1-x", 0, "lab1", ["lab2", "lab1"]), ("s1-x", 1, "lab1", ["lab1"])]
    assert manifest["cluster"]["workers"]["lab1"]["python"] == "3.11.2"


@pytest.mark.parametrize("member", ["../evil", "/etc/evil", "s2-other-r1/x", "s1-x-r1/../../evil"])
def test_raw_files_outside_their_folder_are_refused(tmp_path, member):
    with pytest.raises(LabError, match="outside s1-x-r1/"):
        cluster.unpack_raw(raw_tar("x", {member: b"x"}), tmp_path, "s1-x-r1")
    assert not any(tmp_path.rglob("*evil*"))


def test_links_in_raw_files_are_refused(tmp_path):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("s1-x-r1/link")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(info)
    with pytest.raises(LabError, match="not a file or folder"):
        cluster.unpack_raw(buffer.getvalue(), tmp_path, "s1-x-r1")


def test_a_failed_merge_leaves_no_events(tmp_path):
    manifest = {"cluster": {"workers": {}, "runs": []}}
    events = io.StringIO()
    bad = result()
    bad["raw_tar"] = raw_tar("x", {"../evil": b"x"})
    with pytest.raises(LabError):
        cluster.Merge(tmp_path, manifest, events).accept(bad, ["lab1"])
    assert events.getvalue() == "" and manifest["cluster"]["runs"] == []  # never half-merged


def test_worker_command_line():
    argv = cluster_worker.worker_argv("tcp://10.0.0.1:8786", "lab1", "127.0.0.1", nanny=False, dashboard=False)
    assert argv[:4] == [sys.executable, "-m", "distributed.cli.dask_worker", "tcp://10.0.0.1:8786"]
    joined = " ".join(argv)
    for part in ("--nthreads 1", "--resources lab=1", "--preload caslab.commands.cluster_worker", "--no-nanny",
                 "--name lab1", "--host 127.0.0.1", "--dashboard-address 127.0.0.1:0", "--no-dashboard"):
        assert part in joined, part


def test_allow_mismatch_needs_a_cluster(tmp_path):
    path = tmp_path / "plan.toml"
    path.write_text(SPEC)
    res = subprocess.run([sys.executable, "-m", "caslab.commands.cli", "run", str(path), "--allow-mismatch"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "--allow-mismatch only applies to a run with --cluster" in res.stderr


def test_an_unreachable_scheduler_is_a_clear_error(tmp_path):
    from tests.conftest import free_tcp_port

    path = tmp_path / "plan.toml"
    path.write_text(SPEC)
    address = f"tcp://127.0.0.1:{free_tcp_port()}"
    res = subprocess.run([sys.executable, "-m", "caslab.commands.cli", "run", str(path), "--cluster", address,
                          "--out", str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 1, res.stderr
    assert f"cannot reach the Dask scheduler at {address}" in res.stderr


def test_a_plain_dask_worker_that_cannot_run_a_lab_gets_no_lab_resource(tmp_path):
    """Dask only logs a failing preload, so the preload takes the lab resource away: run
    on a PATH where none of the lab's tools is (a machine that cannot run a lab), the
    worker joins with lab=0."""
    import shutil
    import tempfile

    from tests.conftest import free_tcp_port

    address = f"tcp://127.0.0.1:{free_tcp_port()}"
    home = Path(tempfile.mkdtemp(prefix="caslab-no-tools-"))
    procs = []
    try:
        procs.append(subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                                       "--port", address.rsplit(":", 1)[1], "--dashboard-address", "127.0.0.1:0"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        log = open(tmp_path / "worker.log", "wb")
        procs.append(subprocess.Popen(["env", "-i", f"HOME={home}", "PATH=/nonexistent",
                                       sys.executable, "-m", "distributed.cli.dask_worker", address,
                                       "--host", "127.0.0.1", "--no-dashboard", "--dashboard-address", "127.0.0.1:0",
                                       "--no-nanny", "--nthreads", "1", "--resources", "lab=1",
                                       "--preload", "caslab.commands.cluster_worker", "--local-directory", str(home)],
                                      stdout=log, stderr=subprocess.STDOUT, cwd=str(ROOT), start_new_session=True))
        from distributed import Client

        with Client(address, timeout=30, set_as_default=False) as client:
            client.wait_for_workers(1, timeout=60)
            workers = client.scheduler_info(n_workers=-1)["workers"]
        assert [w["resources"] for w in workers.values()] == [{"lab": 0}]
        assert cluster.lab_machines(workers) == {}
        assert "this machine cannot run the lab: " in (tmp_path / "worker.log").read_text()
        assert "mnexec: missing" in (tmp_path / "worker.log").read_text()
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(home, ignore_errors=True)


def test_caslab_worker_refuses_a_machine_that_cannot_run_a_lab():
    """A machine without the lab's tools (here: a PATH where none of them is) gets no
    worker: it exits 3 naming what is missing, before it ever reaches a scheduler. (Not as
    an unprivileged user: the venv may sit in /root, which only root can enter.)"""
    res = subprocess.run(["env", "-i", "HOME=/", "PATH=/nonexistent", sys.executable, "-m", "caslab.commands.cli", "worker",
                          "--scheduler", "tcp://127.0.0.1:1", "--host", "127.0.0.1"], capture_output=True, text=True,
                         cwd=str(ROOT), timeout=60)
    assert res.returncode == 3, res.stderr
    assert res.stderr.startswith("caslab worker: this machine cannot run the lab: ")
    assert "mnexec: missing" in res.stderr and "tcpdump: missing" in res.stderr
