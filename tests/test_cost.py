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

from caslab import cost
from caslab.netlab import LabNetwork
from caslab.procstat import process_cpu_ms
from labcommon.events import EventLog, read_events
from topologies.plan import LabPlan

ROOT = Path(__file__).resolve().parent.parent
BUSY = [sys.executable, "-c", "while True: pass"]
BURN = [sys.executable, "-c", "import time\nwhile time.process_time() < 0.3: pass"]  # 0.3 s of CPU, then exits


@pytest.fixture
def lab(tmp_path):
    plan = LabPlan.build([{"name": "HQ", "cas": 1, "mailboxes": 1, "clients": 1}])
    lab = LabNetwork(plan, tmp_path, datapath="user")
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
    proc = lab.popen_root("cas1", BUSY if death == "killed" else BURN)
    busy_until(proc, 50)
    meter = cost.CostMeter(lab, lab.plan)
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
    old = lab.popen_root("controller", BUSY)
    busy_until(old, 50)
    meter = cost.CostMeter(lab, lab.plan)
    low, high = open_window(meter, old)
    time.sleep(0.3)
    old.signal(signal.SIGKILL)  # the controller-crash fault
    old_final = zombie_cpu(old)
    new = lab.popen_root("controller", BUSY)  # restarted with a new pid
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
    meter = cost.CostMeter(lab, lab.plan)
    meter.start(time.monotonic_ns())
    proc = lab.popen_root("probe-cl1", BURN)
    final = zombie_cpu(proc)
    events = close_window(meter, tmp_path)
    assert events[proc.pid]["cpu_ms"] == round(final, 1) and final >= 250
    assert events[proc.pid]["started_in_window"] and events[proc.pid]["ended_in_window"]
    assert events[proc.pid]["kind"] == "prober"


def test_only_the_window_counts(lab, tmp_path):
    """A process that ended before the window opened is not in it; one that lived through
    it counts only what it used inside it."""
    gone = lab.popen_root("probe-cl1", BURN)
    zombie_cpu(gone)
    assert not gone.alive()
    steady = lab.popen_root("cas1", BUSY)
    busy_until(steady, 50)
    meter = cost.CostMeter(lab, lab.plan)
    low, high = open_window(meter, steady)
    time.sleep(0.3)
    end_low = process_cpu_ms(steady.pid)
    events = close_window(meter, tmp_path)
    end_high = process_cpu_ms(steady.pid)
    assert gone.pid not in events
    assert round(end_low - high, 1) <= events[steady.pid]["cpu_ms"] <= round(end_high - low, 1)
    assert not events[steady.pid]["started_in_window"] and not events[steady.pid]["ended_in_window"]
    assert events[steady.pid]["window_ms"] >= 300


# ---- kinds -------------------------------------------------------------------------------

def test_kinds_of_the_lab_s_process_names():
    roles = {"cas1": "cas", "mbx1": "mailbox", "cl1": "client", "ad1": "autodiscover"}
    expected = {"cas1": "cas", "mbx1": "mailbox", "cl1": "client", "ad1": "autodiscover", "cl1-http": "client",
                "ext1-http": "client", "mailbox-cas1": "mailbox", "controller": "controller", "health-lb1": "health",
                "wnlb-cas1": "wnlb", "probe-cl1": "prober", "appprobe-cl1": "prober", "tcpdump-cl1": "capture",
                "haproxy-lb1": "haproxy", "dnsmasq": "dns", "ovs-vswitchd": "ovs", "runner": "runner",
                "iperf3": "bench", "srv-cas1": "other"}
    assert {name: cost.kind_of(name, roles) for name in expected} == expected


SPAWNERS = {"popen_in": 1, "popen_root": 0, "start_module": 1}  # where each takes the process name
SAMPLE_HOST = "x1"  # stands for a host name inside an f-string


def spawned_names() -> list[tuple[str, str | None]]:
    """(call site, sample name) of every process the lab starts (None: the service named
    after its host, whose kind is the host's role). A name this cannot read fails."""
    found = []
    for path in sorted((ROOT / "caslab").rglob("*.py")):
        tree = ast.parse(path.read_text())
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
        for call in ast.walk(tree):
            if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr in SPAWNERS):
                continue
            where = f"{path.relative_to(ROOT)}:{call.lineno}"
            index = SPAWNERS[call.func.attr]
            name = next((k.value for k in call.keywords if k.arg == "name"), None) or call.args[index]
            scope = parents[call]
            while not isinstance(scope, ast.FunctionDef):
                scope = parents[scope]
            if scope.name in SPAWNERS and isinstance(name, ast.Name) and name.id in [a.arg for a in scope.args.args]:
                continue  # a spawner passing its caller's name on: checked at the callers
            found += [(where, sample) for sample in samples(name, scope, functions, where)]
    return found


def samples(node, scope, functions, where) -> list[str | None]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.JoinedStr):
        return ["".join(v.value if isinstance(v, ast.Constant) else SAMPLE_HOST for v in node.values)]
    if isinstance(node, ast.Attribute) and node.attr == "name":
        return [None]  # host.name: the role's service, named after its host
    if isinstance(node, ast.IfExp):
        return samples(node.body, scope, functions, where) + samples(node.orelse, scope, functions, where)
    if isinstance(node, ast.Name):
        values = [a.value for a in ast.walk(scope) if isinstance(a, ast.Assign)
                  and any(isinstance(t, ast.Name) and t.id == node.id for t in a.targets)]
        if values:
            return [s for v in values for s in samples(v, scope, functions, where)]
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in functions:
        function = functions[node.func.id]
        return [s for r in ast.walk(function) if isinstance(r, ast.Return) and r.value is not None
                for s in samples(r.value, function, functions, where)]
    raise AssertionError(f"{where}: the process name {ast.unparse(node)!r} cannot be read here; name it with a "
                         "literal, an f-string, host.name or a function of its module that returns one")


def test_every_process_name_the_lab_starts_has_a_kind():
    names = spawned_names()
    literal = {sample for _, sample in names if sample is not None}
    assert {"controller", f"wnlb-{SAMPLE_HOST}", f"{SAMPLE_HOST}-http", f"mailbox-{SAMPLE_HOST}"} <= literal, \
        "the scan finds the lab's spawns"
    assert len(names) >= 15
    missing = [f"{where}: {sample}" for where, sample in names if sample is not None
               and cost.kind_of(sample, {}) == "other"]
    assert not missing, f"processes without a kind (add them to caslab.cost.NAME_KINDS): {missing}"


def test_the_catalogue_lists_every_kind():
    from labcommon.catalogue import PROCESS_CPU

    doc = PROCESS_CPU.fields["kind"].doc
    kinds = {k for _, k in cost.NAME_KINDS} | {k for _, k in cost.SUFFIX_KINDS} | set(cost.ROLE_KINDS.values())
    assert [k for k in sorted(kinds | {"other"}) if k not in doc.split(" / ")] == []
