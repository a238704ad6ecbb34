"""The cost meter on real processes: every lab process that ran during the window counts
for exactly the CPU it used inside it, whether it lived through the window, died in it
(killed by a fault, or on its own) or was started in it (a restarted controller).

The processes are real busy loops started through the lab's own ``LabNetwork.popen_root``
(root namespace, no network needed); the expected CPU is bracketed by reads of the same
kernel counter the meter reads, taken just before and after each of the meter's reads.
"""

from __future__ import annotations

import ast
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from caslab.run import cost
from labcommon import programs
from caslab.network.netlab import LabNetwork
from caslab.base.procstat import process_cpu_ms
from labcommon.events import EventLog, read_events
from topologies.plan import LabPlan

ROOT = Path(__file__).resolve().parent.parent
BUSY = [sys.executable, "-c", "while True: pass"]
BURN = [sys.executable, "-c", "import time\nwhile time.process_time() < 0.3: pass"]  # 0.3 s of CPU, then exits


@pytest.fixture
def lab(tmp_path):
    plan = LabPlan.build([{"name": "HQ", "cas": 1, "mailboxes": 1, "clients": 1}])
    lab = LabNetwork(plan, tmp_path, datapath="user")
    lab.started_up()  # these tests start and restart processes in any order
    yield lab
    for proc in lab.processes:
        proc.stop()


def busy_until(proc, ms: float) -> None:
    """Wait until a process has used some CPU (it runs; the machine may be busy)."""
    deadline = time.monotonic() + 20
    while (process_cpu_ms(proc.pid) or 0) < ms:
        assert time.monotonic() < deadline, f"{proc.name} never used {ms} ms of CPU"
        time.sleep(0.02)


def zombie_cpu(proc) -> float:
    """Wait for a child to end without reaping it; its final CPU from its zombie's stat."""
    os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
    return process_cpu_ms(proc.pid)


def open_window(meter, proc) -> tuple[float, float]:
    """Open the meter's window; the process's CPU read just before and just after."""
    low = process_cpu_ms(proc.pid)
    meter.start(time.monotonic_ns())
    return low, process_cpu_ms(proc.pid)


def close_window(meter, tmp_path) -> dict[int, dict]:
    with EventLog(tmp_path / "cost.jsonl", "runner") as log:
        meter.stop(log, time.monotonic_ns())
    return {e["pid"]: e for e in read_events(tmp_path / "cost.jsonl") if e["ev"] == "process_cpu"}


@pytest.mark.parametrize("reaped", ["by the exit watcher", "at the window's close"])
@pytest.mark.parametrize("death", ["killed", "exits on its own"])
def test_a_process_that_dies_in_the_window_counts_up_to_its_death(lab, tmp_path, death, reaped):
    proc = lab.popen_root("cas1", BUSY if death == "killed" else BURN, program=programs.CAS)
    busy_until(proc, 50)
    meter = cost.CostMeter(lab)
    low, high = open_window(meter, proc)
    if death == "killed":
        time.sleep(0.4)
        proc.signal(signal.SIGKILL)  # what a poweroff or a crash does
    final = zombie_cpu(proc)
    if reaped == "by the exit watcher":
        assert not proc.alive()  # scenario.ExitWatcher polls alive(): this reaps the process
    time.sleep(0.2)
    events = close_window(meter, tmp_path)
    assert proc.pid in events, "a process that died in the window is missing from the cost"
    event = events[proc.pid]
    assert round(final - high, 1) <= event["cpu_ms"] <= round(final - low, 1)
    assert event["cpu_ms"] > 0 and event["name"] == "cas1" and event["kind"] == "cas"
    assert event["ended_in_window"] and not event["started_in_window"]


def test_a_restarted_controller_counts_both_processes(lab, tmp_path):
    old = lab.popen_root("controller", BUSY, program=programs.CONTROLLER)
    busy_until(old, 50)
    meter = cost.CostMeter(lab)
    low, high = open_window(meter, old)
    time.sleep(0.3)
    old.signal(signal.SIGKILL)  # the controller-crash fault
    old_final = zombie_cpu(old)
    new = lab.popen_root("controller", BUSY, program=programs.CONTROLLER)  # restarted with a new pid
    busy_until(new, 100)
    new_low = process_cpu_ms(new.pid)
    events = close_window(meter, tmp_path)
    new_high = process_cpu_ms(new.pid)
    assert old.pid in events and new.pid in events, f"both controllers count: {events}"
    assert round(old_final - high, 1) <= events[old.pid]["cpu_ms"] <= round(old_final - low, 1)
    assert events[old.pid]["ended_in_window"] and not events[old.pid]["started_in_window"]
    # Started in the window: counted from its start, i.e. all of its CPU up to the close.
    assert round(new_low, 1) <= events[new.pid]["cpu_ms"] <= round(new_high, 1)
    assert events[new.pid]["started_in_window"] and not events[new.pid]["ended_in_window"]
    assert {e["name"] for e in events.values()} >= {"controller", "runner"}


def test_a_process_started_and_ended_in_the_window(lab, tmp_path):
    meter = cost.CostMeter(lab)
    meter.start(time.monotonic_ns())
    proc = lab.popen_root("probe-cl1", BURN, program=programs.PROBER)
    final = zombie_cpu(proc)
    events = close_window(meter, tmp_path)
    assert events[proc.pid]["cpu_ms"] == round(final, 1) and final >= 250
    assert events[proc.pid]["started_in_window"] and events[proc.pid]["ended_in_window"]
    assert events[proc.pid]["kind"] == "prober"


def test_only_the_window_counts(lab, tmp_path):
    """A process that ended before the window opened is not in it; one that lived through
    it counts only what it used inside it."""
    gone = lab.popen_root("probe-cl1", BURN, program=programs.PROBER)
    zombie_cpu(gone)
    assert not gone.alive()
    steady = lab.popen_root("cas1", BUSY, program=programs.CAS)
    busy_until(steady, 50)
    meter = cost.CostMeter(lab)
    low, high = open_window(meter, steady)
    time.sleep(0.3)
    end_low = process_cpu_ms(steady.pid)
    events = close_window(meter, tmp_path)
    end_high = process_cpu_ms(steady.pid)
    assert gone.pid not in events
    assert round(end_low - high, 1) <= events[steady.pid]["cpu_ms"] <= round(end_high - low, 1)
    assert not events[steady.pid]["started_in_window"] and not events[steady.pid]["ended_in_window"]
    assert events[steady.pid]["window_ms"] >= 300


# ---- kinds: from the program catalogue ---------------------------------------------------

SPAWNERS = {"popen_in", "popen_root", "start_program", "start_tool"}


def spawn_calls() -> list[tuple[str, ast.Call]]:
    """(call site, call) of every place the engine starts a process."""
    found = []
    for path in sorted((ROOT / "caslab").rglob("*.py")):
        for call in ast.walk(ast.parse(path.read_text())):
            if isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr in SPAWNERS:
                found.append((f"{path.relative_to(ROOT)}:{call.lineno}", call))
    return found


def test_every_process_the_engine_starts_is_one_of_the_catalogue_s_programs():
    """Its kind (and so its cost) comes from its record, never from its name."""
    records = {name for name, value in vars(programs).items() if isinstance(value, programs.Program)}
    calls = spawn_calls()
    assert len(calls) >= 15, "the scan finds the lab's spawns"
    unnamed = []
    for where, call in calls:
        if call.func.attr in ("popen_in", "popen_root"):
            given = next((k.value for k in call.keywords if k.arg == "program"), None)
        else:
            given = call.args[0] if call.args else None
        if isinstance(given, ast.Name) and given.id == "program":
            continue  # a spawner passing its caller's record on: checked at the callers
        if not (isinstance(given, ast.Name) and given.id in records) and not isinstance(given, ast.IfExp):
            unnamed.append(f"{where}: {ast.unparse(call)[:80]}")
        if isinstance(given, ast.IfExp):
            assert {given.body.id, given.orelse.id} <= records, where
    assert not unnamed, f"processes started without a catalogue record: {unnamed}"


def test_a_process_counts_under_its_program_s_kind(lab, tmp_path):
    procs = {record.kind: lab.popen_root(record.process_name("x1"), BUSY, program=record)
             for record in (programs.CAS, programs.HEALTH_AGENT, programs.HTTP_CLIENT)}
    meter = cost.CostMeter(lab)
    meter.start(time.monotonic_ns())
    events = close_window(meter, tmp_path)
    assert {events[p.pid]["name"]: events[p.pid]["kind"] for p in procs.values()} == {
        "x1": "cas", "health-x1": "health", "x1-http": "client"}
    assert {e["kind"] for e in events.values() if e["name"] == "runner"} == {"runner"}


def test_the_catalogue_of_events_lists_every_kind():
    from labcommon.catalogue import PROCESS_CPU

    documented = set(PROCESS_CPU.fields["kind"].doc.split(": ", 1)[1].split(" / "))
    kinds = {p.kind for p in programs.PROGRAMS.values()} | {cost.OVS, cost.RUNNER}
    assert kinds == documented
