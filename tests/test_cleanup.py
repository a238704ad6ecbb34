"""A run killed with SIGKILL leaves processes and bridges; ``caslab cleanup`` finds them
in the registry under /run/caslab (wherever the results went) and removes exactly them.
A run that is still alive is never touched. A result folder is never reused by accident."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from caslab import runner
from caslab.netlab import LabError
from caslab.registry import LabRecord, live_labs, same_process, start_time
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
    return subprocess.Popen([sys.executable, "-m", "caslab.cli", "run", str(spec), "--out", str(tmp_path / "elsewhere")],
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
    return subprocess.run([sys.executable, "-m", "caslab.cli", "cleanup"], cwd=ROOT, capture_output=True, text=True,
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
    monkeypatch.setattr("caslab.registry.RUN_ROOT", tmp_path)
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
    with pytest.raises(LabError, match="not empty"):
        runner.prepare_folder(out, force=False)
    assert (out / "events.jsonl").exists(), "nothing of the old run is touched"
    runner.prepare_folder(out, force=True)
    assert out.is_dir() and not any(out.iterdir()), "--force starts it empty"
    runner.prepare_folder(tmp_path / "new" / "deep", force=False)
    assert (tmp_path / "new" / "deep").is_dir()
