"""``caslab up`` for real: a live lab driven through its Mininet CLI (stdin) and from a
second process (``caslab fault``, ``caslab nlb``, ``caslab down``), then torn down with
nothing left; and a SIGKILLed live lab that ``caslab cleanup`` removes from the registry.
Plus the live lab's pure parts (spec preparation, request parsing, the control socket)."""

from __future__ import annotations

import json
import os
import queue
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from caslab.run import live, live_control
from caslab.schema.fields import SpecError
from tests.conftest import ROOT, lab_residue


def caslab(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "caslab.commands.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


class LiveProcess:
    """``caslab up`` in the background; its output lines in a queue."""

    def __init__(self, tmp_path: Path, *args: str):
        env = {**os.environ, "CASLAB_RESULTS": str(tmp_path)}
        self.out = tmp_path / "live"
        self.proc = subprocess.Popen([sys.executable, "-m", "caslab.commands.cli", "up", "soak", "--out", str(self.out), *args],
                                     cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, bufsize=1)
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=lambda: [self.lines.put(line) for line in self.proc.stdout], daemon=True).start()

    def wait_for(self, text: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                if self.proc.poll() is not None and self.lines.empty():
                    break
                continue
            self.seen.append(line)
            if text in line:
                return
        pytest.fail(f"never saw {text!r}:\n{''.join(self.seen)}")

    def type(self, line: str) -> None:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def events(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "events.jsonl").read_text().splitlines()]


@pytest.mark.require_root
def test_live_lab_takes_commands_from_a_second_shell_and_leaves_nothing(tmp_path, no_residue):
    resolv = Path("/etc/resolv.conf").read_bytes() if Path("/etc/resolv.conf").exists() else None
    lab = LiveProcess(tmp_path)
    try:
        lab.wait_for("live lab ready", float(os.environ["CASLAB_LOCK_WAIT_S"]) + 120)
        table = "".join(lab.seen)
        assert "admin API: http://127.0.0.1:" in table and "cl1" in table
        # the token is not printed: the path of its 0600 file is, which `caslab nlb --token-file` reads
        [line] = [line for line in table.splitlines() if line.startswith("admin API:")]
        port, token_file = line.split("127.0.0.1:")[1].split("/")[0], line.split("token file (0600): ")[1].strip()
        assert stat.S_IMODE(os.stat(token_file).st_mode) == 0o600 and os.stat(token_file).st_uid == 0
        assert Path(token_file).read_text().strip() not in table
        shown = caslab("nlb", "show")
        assert shown.returncode == 0 and json.loads(shown.stdout)["vips"], shown.stderr
        direct = caslab("nlb", "--port", port, "--token-file", token_file, "show")
        assert direct.returncode == 0, direct.stderr
        assert [v["ip"] for v in json.loads(direct.stdout)["vips"]] == [v["ip"] for v in json.loads(shown.stdout)["vips"]]
        wrong = caslab("fault", "crash", "cas9")
        assert wrong.returncode == 1 and "did you mean" in wrong.stderr, wrong.stderr
        hit = caslab("fault", "crash", "@busiest")
        assert hit.returncode == 0 and "injected crash cas" in hit.stdout, hit.stdout + hit.stderr
        lab.type("cl1 ping -c 1 -W 2 outlook.hq.lab.test")  # the host resolves the array through the lab's DNS
        lab.wait_for("1 received", 30)
        down = caslab("down")
        assert down.returncode == 0, down.stderr
        assert lab.proc.wait(120) == 0, "".join(lab.seen)
    finally:
        lab.stop()
    assert (Path("/etc/resolv.conf").read_bytes() if resolv is not None else None) == resolv
    evs = events(lab.out)
    crash = [e for e in evs if e["ev"] == "fault"]
    assert len(crash) == 1 and crash[0]["kind"] == "crash" and crash[0]["targets"][0].startswith("cas")
    commands = [(e["command"], e["ok"]) for e in evs if e["ev"] == "live_command"]
    assert ("fault crash cas9", False) in commands and ("fault crash @busiest", True) in commands
    assert ("nlb show", True) in commands and ("stop", True) in commands
    manifest = json.loads((lab.out / "manifest.json").read_text())
    assert manifest["live"] and manifest["complete"]
    assert (lab.out / "report.html").exists() and (tmp_path / "index.html").exists()
    assert "live" in (tmp_path / "index.html").read_text()
    assert caslab("report", str(lab.out)).returncode == 0
    compared = caslab("compare", str(lab.out), str(lab.out))
    assert compared.returncode == 0 and "sdn-nlb" in compared.stdout, compared.stderr
    assert live_control.running_live_lab() is None


@pytest.mark.require_root
def test_sigkilled_live_lab_is_cleaned_up(tmp_path, no_residue):
    lab = LiveProcess(tmp_path, "--no-cli", "--no-clients")
    try:
        lab.wait_for("live lab ready", float(os.environ["CASLAB_LOCK_WAIT_S"]) + 120)
        found = live_control.running_live_lab()
        assert found is not None and Path(found[1]["live"]["control"]).exists()
        lab.proc.kill()  # no teardown at all
        lab.proc.wait(10)
        assert lab_residue(), "SIGKILL left the lab behind"
        result = caslab("cleanup")
        assert "removed clab1" in result.stdout, result.stdout + result.stderr
        assert not found[0].exists(), "its registry folder and control socket are gone"
        deadline = time.monotonic() + 10
        while lab_residue() and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        lab.stop()
    assert live_control.running_live_lab() is None


# ---------------------------------------------------------------- pure parts


def test_prepare_drops_the_specs_faults_and_picks_a_mode():
    spec, scenario, path, notes = live.prepare("default", [], None)
    assert scenario["mode"] == "sdn-nlb" and scenario["faults"] == [] and path.name == "default.toml"
    assert any("not injected" in n for n in notes)
    _, haproxy, _, _ = live.prepare("default", ["clients.sessions_per_host=2"], "haproxy")
    assert haproxy["mode"] == "haproxy" and haproxy["clients"]["sessions_per_host"] == 2
    with pytest.raises(SpecError, match="did you mean 'sdn-nlb'"):
        live.prepare("default", [], "sdn-nbl")


def test_fault_words_become_a_request():
    assert live_control.fault_request(["drain", "cas1,cas2", "--deadline-s", "5", "--note=x"]) == {
        "op": "fault", "kind": "drain", "target": ["cas1", "cas2"], "params": {"deadline_s": 5, "note": "x"}}
    assert live_control.fault_request(["controller-crash"])["target"] == []
    with pytest.raises(ValueError, match="needs a value"):
        live_control.fault_request(["drain", "cas1", "--deadline_s"])
    with pytest.raises(ValueError, match="usage"):
        live_control.fault_request([])
    assert live.describe({"op": "nlb", "action": "drain", "vip": "cas1", "value": None, "deadline": 2.0}) == \
        "nlb drain cas1 --deadline 2.0"


def test_control_socket_is_private_and_answers_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr("caslab.network.registry.RUN_ROOT", tmp_path)
    folder = tmp_path / "labs" / f"{os.getpid()}-x"
    folder.mkdir(parents=True)
    server = live_control.ControlServer(folder / "control.sock",
                                        lambda request: {"ok": True, "answer": f"got {request['op']}"})
    server.start()
    try:
        assert stat.S_IMODE(os.stat(server.path).st_mode) == 0o600
        from caslab.network.registry import start_time, write_atomic

        write_atomic(folder / "lab.json", {"runner_pid": os.getpid(), "runner_start": start_time(os.getpid()),
                                           "live": {"control": str(server.path)}})
        assert live_control.send({"op": "status"}) == {"ok": True, "answer": "got status"}
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(server.path))
            sock.sendall(b"not json\n")
            assert json.loads(live_control.read_line(sock))["ok"] is False
    finally:
        server.close()
    assert not server.path.exists()


@pytest.mark.parametrize("bad", [b"[" * 30_000 + b"]" * 30_000 + b"\n", b'{"a":' * 10_000 + b"1" + b"}" * 10_000 + b"\n",
                                 b"\xff\xfe\n", b'{"op": "boom"}\n'])
def test_no_request_ends_the_control_thread(tmp_path, bad):
    """Deeply nested JSON (RecursionError), bytes that are not UTF-8, or a handler that
    raises: each is answered as refused and the next request is still served (a dead
    control thread left ``caslab down`` waiting 120 s)."""
    def handler(request):
        if request.get("op") == "boom":
            raise RuntimeError("a bug in the handler")
        return {"ok": True, "answer": f"got {request['op']}"}

    server = live_control.ControlServer(tmp_path / "control.sock", handler)
    server.start()
    try:
        for request in (bad, b'{"op": "status"}\n'):
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(5)
                sock.connect(str(server.path))
                sock.sendall(request)
                sock.shutdown(socket.SHUT_WR)
                answer = json.loads(live_control.read_line(sock))
            assert answer["ok"] is (request != bad), answer
        assert answer == {"ok": True, "answer": "got status"} and server.is_alive()
    finally:
        server.close()
