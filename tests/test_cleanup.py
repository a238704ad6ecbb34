"""A run killed with SIGKILL leaves processes and bridges; ``caslab cleanup`` finds them
in the registry under /run/caslab (wherever the results went) and removes exactly them.
A run that is still alive is never touched. A result folder is never reused by accident."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from caslab.run import runner
from caslab.network.netlab import LabError
from caslab.network.registry import LabRecord, live_labs, same_process, start_time
from tests.conftest import ROOT, lab_residue

SPEC = """
[experiment]
name = "killed"
modes = ["sdn-nlb"]
[topology]
cas = 2
mailboxes = 2
client_hosts = 1
[clients]
sessions_per_host = 4
[timing]
warmup_s = 30.0
observe_s = 4.0
"""


def lab_processes(marker: str) -> list[str]:
    """Processes whose command line names this test's folder (roles, clients, controller)."""
    out, me = [], str(os.getpid())
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and proc.name != me:
            try:
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if marker in cmd:
                out.append(f"{proc.name}: {cmd[:100]}")
    return out


def start_run(tmp_path: Path) -> subprocess.Popen:
    spec = tmp_path / "killed.toml"
    spec.write_text(SPEC)
    return subprocess.Popen([sys.executable, "-m", "caslab.commands.cli", "run", str(spec), "--out", str(tmp_path / "elsewhere")],
                            cwd=ROOT, stderr=subprocess.PIPE, text=True)


def wait_for(proc: subprocess.Popen, text: str, timeout_s: float = 90) -> str:
    seen, deadline = "", time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        seen += line
        if text in line:
            return seen
    pytest.fail(f"never saw {text!r}: {seen}")


def cleanup() -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "caslab.commands.cli", "cleanup"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.require_root
def test_sigkilled_run_is_cleaned_up_from_the_registry(tmp_path, no_residue):
    proc = start_run(tmp_path)
    try:
        wait_for(proc, "warming up")
        assert lab_processes(str(tmp_path)), "the run started its processes"
        refused = cleanup()
        assert refused.returncode == 1 and "still running" in refused.stdout, refused.stdout
        assert lab_processes(str(tmp_path)), "a live run is never touched"
        proc.kill()  # SIGKILL: no teardown at all
        proc.wait(10)
        assert lab_residue(), "SIGKILL left the lab behind"
        result = cleanup()
        assert result.returncode == 0, result.stdout + result.stderr
        assert "killed" in result.stdout and "removed clab1" in result.stdout, result.stdout
        deadline = time.monotonic() + 10
        while lab_processes(str(tmp_path)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not lab_processes(str(tmp_path))
        assert not lab_residue()
        assert not live_labs(), "the registry entry is gone too"
        assert "nothing of the lab was left" in cleanup().stdout
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        cleanup()


def test_registry_records_processes_with_their_start_time(tmp_path, monkeypatch):
    monkeypatch.setattr("caslab.network.registry.RUN_ROOT", tmp_path)
    record = LabRecord.create(tmp_path / "results", ["clab1"], "netdev@ovs-netdev")
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        record.process("sleeper", sleeper.pid, None)
        [(folder, lab, procs)] = live_labs()
        assert lab["runner_pid"] == os.getpid() and lab["bridges"] == ["clab1"]
        assert procs == [{"name": "sleeper", "pid": sleeper.pid, "host": None, "start": start_time(sleeper.pid)}]
        assert same_process(sleeper.pid, procs[0]["start"])
        assert not same_process(sleeper.pid, procs[0]["start"] + 1), "a recycled pid has another start time"
        record.remove()
        assert live_labs() == []
    finally:
        sleeper.kill()
        sleeper.wait()


def test_an_existing_result_folder_is_refused_unless_forced(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "events.jsonl").write_text('{"ev":"op"}\n')
    (out / "manifest.json").write_text(json.dumps({"run_id": "run", "spec": {"experiment": {"name": "x"}}}))
    with pytest.raises(LabError, match="not empty"):
        runner.prepare_folder(out, force=False)
    assert (out / "events.jsonl").exists(), "nothing of the old run is touched"
    runner.prepare_folder(out, force=True)
    assert out.is_dir() and not any(out.iterdir()), "--force starts it empty"
    runner.prepare_folder(tmp_path / "new" / "deep", force=False)
    assert (tmp_path / "new" / "deep").is_dir()


@pytest.mark.parametrize("content", [None, "not json", "[]", '{"run_id": "x"}'],
                         ids=["no_manifest", "bad_json", "not_an_object", "no_spec"])
def test_force_empties_only_a_folder_that_is_a_caslab_result(tmp_path, content):
    # Old behaviour: --force deleted any non-empty folder (--out ~ would have taken a home).
    out = tmp_path / "mine"
    (out / "thesis").mkdir(parents=True)
    (out / "thesis" / "chapter1.tex").write_text("years of work")
    if content is not None:
        (out / "manifest.json").write_text(content)
    with pytest.raises(LabError, match="not a caslab result folder"):
        runner.prepare_folder(out, force=True)
    assert (out / "thesis" / "chapter1.tex").read_text() == "years of work"


def test_an_out_folder_named_like_an_option_becomes_an_absolute_path(tmp_path, monkeypatch):
    # Old behaviour: --out=-x stayed "-x": the live lab's resolv.conf bind mount ran
    # "mount --bind -x/raw/.../resolv.conf ...", and mount read the path as options.
    monkeypatch.chdir(tmp_path)
    folder = runner.result_folder("-x", "unused")
    assert folder == tmp_path / "-x" and folder.is_absolute()
    assert runner.result_folder(None, "name-1").is_absolute()
    live = (ROOT / "caslab" / "run" / "live.py").read_text()
    assert '"mount", "--bind", "--",' in live, "paths after -- are never options"


def test_a_dead_labs_processes_are_ended_but_a_running_labs_names_are_kept(tmp_path, monkeypatch):
    """The bridge names are shared: while a lab runs, cleanup of a dead one must not sweep them."""
    from caslab.network import cleanup as cleanup_mod
    from caslab.network.registry import write_atomic

    monkeypatch.setattr("caslab.network.registry.RUN_ROOT", tmp_path)
    swept = []
    monkeypatch.setattr(cleanup_mod, "sweep_lab_names", lambda names: swept.append(names) or [])
    monkeypatch.setattr(cleanup_mod, "flush_lab_conntrack", lambda *a: swept.append(a))
    live = LabRecord.create(tmp_path / "live", ["clab1"], "netdev@ovs-netdev")  # this process: running
    gone_runner = subprocess.Popen(["true"])
    gone_runner.wait()
    dead = LabRecord(live.folder.parent / "1-1")
    write_atomic(dead.folder / "lab.json", {"runner_pid": gone_runner.pid, "runner_start": 1,
                                            "run_dir": str(tmp_path / "dead"), "bridges": ["clab1"],
                                            "datapath": "netdev@ovs-netdev"})
    orphan = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        dead.process("controller", orphan.pid, None)
        assert cleanup_mod.run() == 1, "a running lab is reported"
        assert orphan.wait(5) == -9, "the dead lab's recorded process was ended"
        assert swept == [], "no bridge, interface or conntrack zone touched while a lab runs"
        assert [folder for folder, _, _ in live_labs()] == [live.folder], "only the dead lab's entry is gone"
    finally:
        if orphan.poll() is None:
            orphan.kill()
            orphan.wait()
        live.remove()


@pytest.mark.require_root
@pytest.mark.parametrize("command,moment", [("run", "starting Exchange roles"), ("soak", "warming up")])
def test_sigterm_at_any_moment_tears_the_lab_down(tmp_path, no_residue, command, moment):
    spec = tmp_path / "killed.toml"
    spec.write_text(SPEC)
    argv = [sys.executable, "-m", "caslab.commands.cli", command] + (["2"] if command == "soak" else [])
    proc = subprocess.Popen(argv + [str(spec), "--out", str(tmp_path / "out")], cwd=ROOT, stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True)
    try:
        wait_for(proc, moment)
        proc.terminate()
        assert proc.wait(60) == 130, "an interrupted command says so in its exit status"
        assert "interrupted" in proc.stderr.read()
        assert not lab_processes(str(tmp_path)), "every process the lab started is gone"
        assert not [lab for _, lab, _ in live_labs() if str(tmp_path) in lab.get("run_dir", "")], \
            "the registry entry is removed by the teardown"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


RESTARTED_SPEC = SPEC.replace("warmup_s = 30.0", "warmup_s = 1.0").replace("observe_s = 4.0", "observe_s = 2.0")


@pytest.mark.require_root
def test_a_run_sweeps_what_a_machine_restart_left_in_open_vswitch(tmp_path, no_residue):
    """After a restart the registry under /run is gone but Open vSwitch's database still
    holds the dead run's bridges: the next run removes them (it holds the lab lock, so
    no lab runs) and says so, instead of refusing to start."""
    from caslab.network import ofchannel

    for bridge in ("clab1", "clab2"):
        subprocess.run(["ovs-vsctl", "--timeout=5", "add-br", bridge, "--", "set", "bridge", bridge,
                        "datapath_type=netdev"], check=True)
    # and its OpenFlow channel's SSL configuration, which saved what was there before
    found = ofchannel.current_ssl()
    ofchannel._set_ssl({"private_key": "/run/caslab/labs/gone/tls/switch.key", "certificate": "/gone/switch.pem",
                        "ca_cert": "/gone/ca.pem", "external_ids": {ofchannel.MARK: "1-1",
                                                                   ofchannel.SAVED: ofchannel._encode(found)}})
    assert "bridge clab2" in lab_residue() and "Open vSwitch's SSL configuration is still a lab's" in lab_residue()
    spec = tmp_path / "after-restart.toml"
    spec.write_text(RESTARTED_SPEC)
    result = subprocess.run([sys.executable, "-m", "caslab.commands.cli", "run", str(spec), "--out", str(tmp_path / "out")],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "removed what a dead run left" in result.stderr and "clab2" in result.stderr, result.stderr[-3000:]
    assert "restored the Open vSwitch SSL configuration" in result.stderr
    assert ofchannel.current_ssl() == found, "the configuration from before the dead run is back"
    assert (tmp_path / "out" / "summary.json").exists()


@pytest.mark.require_root
def test_soak_checks_every_run_and_reports_growth(tmp_path, no_residue):
    """``caslab soak``: two runs back to back, each followed by its residue and leak checks."""
    result = subprocess.run([sys.executable, "-m", "caslab.commands.cli", "soak", "2", "--out", str(tmp_path / "soak")],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert [line.split(":")[0] for line in lines if line.startswith("run ")] == ["run   1/2", "run   2/2"]
    assert all(": ok" in line for line in lines if line.startswith("run "))
    assert "2 of 2 runs passed; growth from run 1 to run 2: runner_fds" in result.stdout
    assert sorted(p.name for p in (tmp_path / "soak").iterdir()) == ["run-001", "run-002"]
