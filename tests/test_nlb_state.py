"""controllers/nlb_state.py, controllers/nlb_io.py and controllers/nlb_challenger.py: the
NLB's state apart from OpenFlow. VIPs and their sources, the admin state file (atomic,
robust to corruption), the switch's conntrack as dpctl prints it, the ovs-vswitchd control
socket, the token bucket and the challenge schedule, on times the test gives."""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import threading
from pathlib import Path

import pytest

from controllers import nlb_io, nlb_state
from controllers.nlb_challenger import ChallengeSchedule
from controllers.nlb_io import AdminState, OvsConntrack
from controllers.nlb_logic import Connection
from controllers.nlb_state import CtEntry, TokenBucket, Vip, parse_conntrack
from tests.nlb_lab import CLIENT, config

SPEC = config().vips[0]


# ---- Vip -------------------------------------------------------------------------------------------------


def test_vip_indexes_members_and_knows_its_sources():
    vip = Vip(1, SPEC, fall=3, rise=4)
    assert vip.member_index == {"cas1": 1, "cas2": 2, "cas3": 3}
    assert vip.member_by_ip("10.1.1.2").name == "cas2" and vip.member_by_ip("10.1.1.9") is None
    assert vip.member_by_index(3).name == "cas3" and vip.member_by_index(0) is None
    assert (vip.health["cas1"].fall, vip.health["cas1"].rise) == (3, 4)
    assert vip.allowed_sources() == [] and vip.client_port(CLIENT.ip) == (None, "")  # no port known yet
    vip.port_numbers = {CLIENT.port_name: 10}
    assert vip.allowed_sources() == [(10, "10.1.3.1/32"), (10, "10.1.10.0/24")]
    assert vip.client_port("10.1.10.77") == (10, CLIENT.mac) and vip.client_port("10.1.11.5") == (None, "")


# ---- AdminState ------------------------------------------------------------------------------------------


def test_admin_state_round_trips_through_its_file(tmp_path):
    path = tmp_path / "deep" / "state.json"
    state = AdminState.load(str(path))
    assert state.members == {} and state.get("10.1.0.100", "cas1") == {}
    state.set("10.1.0.100", "cas1", admin_up=False)
    state.set("10.1.0.100", "cas1", draining=True)
    state.set("10.2.0.100", "cas4", draining=False)
    again = AdminState.load(str(path))
    assert again.get("10.1.0.100", "cas1") == {"admin_up": False, "draining": True}
    assert again.members == state.members
    assert sorted(p.name for p in path.parent.iterdir()) == ["state.json"]  # no temporary file left


def test_admin_state_without_a_path_keeps_nothing_on_disk(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    state = AdminState.load(None)
    state.set("v", "m", admin_up=False)
    assert state.get("v", "m") == {"admin_up": False} and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("content", [
    b"", b"{", b"\xff\xfe\x00garbage", b"[1, 2]", b"null", b"42", b'"text"',
    b'{"10.1.0.100": [1, 2]}', b'{"10.1.0.100": {"cas1": 5, "cas2": {"admin_up": false}}}',
])
def test_a_corrupt_state_file_is_survived(tmp_path, content):
    path = tmp_path / "state.json"
    path.write_bytes(content)
    state = AdminState.load(str(path))
    assert all(isinstance(s, dict) for ms in state.members.values() for s in ms.values())
    if b"cas2" in content:
        assert state.get("10.1.0.100", "cas2") == {"admin_up": False} and state.get("10.1.0.100", "cas1") == {}
    state.set("10.1.0.100", "cas3", admin_up=True)  # and the next save replaces it with a good one
    assert json.loads(path.read_text())["10.1.0.100"]["cas3"] == {"admin_up": True}


def test_a_save_that_fails_leaves_the_old_file_whole(tmp_path, monkeypatch):
    path = tmp_path / "state.json"
    state = AdminState.load(str(path))
    state.set("v", "cas1", admin_up=False)
    before = path.read_bytes()

    def broken(*_args, **_kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(nlb_io.json, "dump", broken)
    with pytest.raises(OSError):
        state.set("v", "cas2", admin_up=False)
    assert path.read_bytes() == before and AdminState.load(str(path)).get("v", "cas2") == {}


def test_a_state_file_is_replaced_never_written_in_place(tmp_path, monkeypatch):
    path = tmp_path / "state.json"
    state = AdminState.load(str(path))
    state.set("v", "cas1", admin_up=False)
    replaced = []
    real = os.replace
    monkeypatch.setattr(nlb_io.os, "replace", lambda src, dst: replaced.append((Path(src).parent, dst))
                        or real(src, dst))
    state.set("v", "cas1", admin_up=True)
    assert replaced == [(tmp_path, path)]


# ---- conntrack -------------------------------------------------------------------------------------------

# as ovs-vswitchd prints dpctl/dump-conntrack (no -m, no -s: lib/ct-dpif.c, ct_dpif_format_entry)
DUMP = """\
tcp,orig=(src=10.1.3.1,dst=10.1.0.100,sport=40000,dport=6001),reply=(src=10.1.1.2,dst=10.1.3.1,sport=6001,dport=40000),zone=51793,mark=2,protoinfo=(state=ESTABLISHED)
tcp,orig=(src=10.1.10.7,dst=10.1.0.100,sport=40001,dport=6001),reply=(src=10.1.1.1,dst=10.1.10.7,sport=6001,dport=40001),zone=51793,mark=1,protoinfo=(state=TIME_WAIT)
tcp,orig=(src=10.1.3.2,dst=10.1.0.100,sport=40002,dport=135),reply=(src=10.1.1.3,dst=10.1.3.2,sport=135,dport=40002),zone=51793,protoinfo=(state=SYN_SENT)
tcp,orig=(src=10.1.3.2,dst=10.1.0.100,sport=40003,dport=6001),reply=(src=10.1.1.3,dst=10.1.3.2,sport=6001,dport=40003),zone=51793,mark=3,labels=0x1f,protoinfo=(state=ESTABLISHED)
udp,orig=(src=10.1.3.1,dst=10.1.0.2,sport=5353,dport=53),reply=(src=10.1.0.2,dst=10.1.3.1,sport=53,dport=5353),zone=51793
icmp,orig=(src=10.1.3.1,dst=10.1.0.100,id=1,type=8,code=0),reply=(src=10.1.0.100,dst=10.1.3.1,id=1,type=0,code=0),zone=51793
garbage line
"""


def test_parse_conntrack_reads_tcp_entries_only():
    assert parse_conntrack(DUMP) == [
        CtEntry("10.1.3.1", 40000, "10.1.0.100", 6001, 51793, 2, "ESTABLISHED"),
        CtEntry("10.1.10.7", 40001, "10.1.0.100", 6001, 51793, 1, "TIME_WAIT"),
        CtEntry("10.1.3.2", 40002, "10.1.0.100", 135, 51793, 0, "SYN_SENT"),
        CtEntry("10.1.3.2", 40003, "10.1.0.100", 6001, 51793, 3, "ESTABLISHED"),
    ]
    assert parse_conntrack("") == [] and parse_conntrack("\n\n") == []


@pytest.fixture
def ovs_rundir(monkeypatch):
    """A directory standing in for /var/run/openvswitch (short: a socket path has 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="ovs", dir="/tmp"))
    monkeypatch.setattr(nlb_io, "OVS_RUNDIR", path)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def fake_vswitchd(rundir: Path, answer) -> list:
    """Serve one JSON-RPC request per connection on ovs-vswitchd.<pid>.ctl; returns the requests."""
    (rundir / "ovs-vswitchd.pid").write_text("4242\n")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(rundir / "ovs-vswitchd.4242.ctl"))
    server.listen(4)
    requests: list = []

    def serve():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                request = json.loads(conn.recv(65536).decode())
                requests.append(request)
                reply = json.dumps(answer(request)).encode()
                for i in range(0, len(reply), 7):  # in pieces, as a busy daemon may
                    conn.sendall(reply[i:i + 7])

    threading.Thread(target=serve, daemon=True).start()
    return requests


def test_unixctl_speaks_json_rpc_to_ovs_vswitchd(ovs_rundir):
    requests = fake_vswitchd(ovs_rundir, lambda r: {"id": r["id"], "error": None, "result": DUMP}
                             if r["params"] != ["boom"] else {"id": r["id"], "error": "no such thing"})
    assert nlb_io.dump_conntrack(51793, "netdev@ovs-netdev")[0].mark == 2
    assert requests[-1] == {"method": "dpctl/dump-conntrack", "params": ["netdev@ovs-netdev", "zone=51793"], "id": 0}
    with pytest.raises(OSError, match="no such thing"):
        nlb_io.unixctl("dpctl/del-flow", "boom")


def test_dump_conntrack_falls_back_to_ovs_appctl_and_never_raises(ovs_rundir, monkeypatch):
    class Done:
        stdout = DUMP

    calls = []
    monkeypatch.setattr(nlb_io.subprocess, "run", lambda argv, **kw: calls.append(argv) or Done())
    assert len(nlb_io.dump_conntrack(51793)) == 4  # no vswitchd pid file: the ovs-appctl path
    assert calls == [["ovs-appctl", "dpctl/dump-conntrack", "zone=51793"]]

    def missing(*_a, **_k):
        raise FileNotFoundError("ovs-appctl")

    monkeypatch.setattr(nlb_io.subprocess, "run", missing)
    assert nlb_io.dump_conntrack(51793) == []


def test_the_conntrack_reader_reads_its_datapaths_zones(monkeypatch):
    calls = []
    monkeypatch.setattr(nlb_io, "dump_conntrack", lambda zone, datapath: calls.append(("dump", zone, datapath)) or [])
    monkeypatch.setattr(nlb_io, "flush_conntrack", lambda zone, datapath: calls.append(("flush", zone, datapath)))
    reader = OvsConntrack("netdev@ovs-netdev")
    assert reader.dump(51793) == []
    reader.flush(51794)
    assert calls == [("dump", 51793, "netdev@ovs-netdev"), ("flush", 51794, "netdev@ovs-netdev")]


def test_nlb_state_is_pure():
    import ast, inspect  # noqa: E401
    imported = {a.name.split(".")[0] for node in ast.walk(ast.parse(inspect.getsource(nlb_state)))
                if isinstance(node, (ast.Import, ast.ImportFrom)) for a in node.names}
    assert not imported & {"os", "socket", "subprocess", "tempfile", "time", "json"}, imported
    assert not hasattr(nlb_state, "dump_conntrack")  # the I/O is controllers/nlb_io.py's alone


# ---- TokenBucket ------------------------------------------------------------------------------------------


def test_token_bucket_allows_a_burst_then_the_rate():
    bucket = TokenBucket(rate=10, burst=3, now=1000.0)
    assert [bucket.allow(1000.0) for _ in range(5)] == [True, True, True, False, False]
    assert [bucket.allow(1000.1) for _ in range(2)] == [True, False]  # one token in 0.1 s
    assert bucket.take_refused() == 3 and bucket.take_refused() == 0
    assert sum(bucket.allow(4600.1) for _ in range(10)) == 3 and bucket.refused == 7  # never more than the burst


# ---- the challenge schedule ------------------------------------------------------------------------------

DELAYS = [0.001, 0.002, 0.005, 0.02, 0.25]
MS = 1_000_000
T0 = 1000 * 1000 * MS


def conn(port: int) -> Connection:
    return Connection(("10.1.3.1", port, "10.1.0.100", 6001), "cas1", "02:00:0a:01:03:01", 10, 0)


def run_for(schedule: ChallengeSchedule, now: int, seconds: float) -> tuple[list, int]:
    """What the app's timer does, from ``now`` for ``seconds``: [(ms since T0, client port)], the end."""
    end, sent = now + round(seconds * 1e9), []
    while True:
        sent += [(round((now - T0) / MS, 6), c.key[1]) for _, _, c in schedule.due(now)]
        at = schedule.next_at()
        if at is None or at > end:
            return sent, end
        now = max(now, at)


def test_challenges_follow_the_schedule_densely_first_then_end():
    schedule = ChallengeSchedule([0.25, 0.001, 0.02, 0.002, 0.005])  # sorted by the schedule
    schedule.add("dp", "vip", [conn(1), conn(2)], T0)
    sent, _ = run_for(schedule, T0, 10)
    times = sorted({t for t, _ in sent})
    assert times == [0.0] + [d * 1000 for d in DELAYS]  # once at once, then at each delay from the start
    assert sorted(p for _, p in sent) == [1] * 6 + [2] * 6
    assert schedule.pending == {} and schedule.heap == [] and schedule.next_at() is None


def test_done_stops_the_challenges_of_a_connection():
    schedule = ChallengeSchedule(DELAYS)
    schedule.add("dp", "vip", [conn(1), conn(2)], T0, at_once=False)
    assert schedule.due(T0) == [] and schedule.next_at() == T0 + 1 * MS
    sent, now = run_for(schedule, T0, 0.003)  # rounds at 1 and 2 ms
    assert schedule.done(("10.1.3.1", 1, "10.1.0.100", 6001)) is True
    assert schedule.done(("10.1.3.1", 1, "10.1.0.100", 6001)) is False  # not pending any more
    more, _ = run_for(schedule, now, 10)
    sent += more
    assert [p for _, p in sent].count(1) == 2 and [p for _, p in sent].count(2) == 5
    schedule.add("dp", "vip", [], now)  # nothing to do
    assert schedule.heap == []


def test_a_batch_everybody_answered_leaves_the_schedule():
    schedule = ChallengeSchedule(DELAYS)
    schedule.add("dp", "vip", [conn(1)], T0, at_once=False)
    schedule.done(conn(1).key)
    assert schedule.due(T0 + 1000 * MS) == [] and schedule.heap == []


def test_a_connection_added_again_stays_until_its_last_batch_ends():
    schedule = ChallengeSchedule([0.001, 0.002])
    schedule.add("dp", "vip", [conn(1)], T0, at_once=False)
    schedule.add("dp2", "vip", [conn(1)], T0 + 1 * MS, at_once=False)  # a second failover found it again
    # due at 2 ms: the first batch's two rounds and the second's first, each to where it is now
    assert [(ch, c.key[1]) for ch, _, c in schedule.due(T0 + 2 * MS)] == [("dp2", 1)] * 3
    assert conn(1).key in schedule.pending  # the first batch ended, not the second
    schedule.due(T0 + 3 * MS)
    assert schedule.pending == {} and schedule.next_at() is None


def test_a_settle_time_challenges_once_before_the_schedule_when_not_at_once():
    schedule = ChallengeSchedule([0.025, 0.075], settle_s=0.001)
    schedule.add("dp", "vip", [conn(1)], T0, at_once=False)
    assert schedule.next_at() == T0 + 1 * MS
    assert [key for _, _, c in schedule.due(T0 + 1 * MS) for key in [c.key]] == [conn(1).key]
    assert schedule.next_at() == T0 + 25 * MS
    schedule.add("dp", "vip", [conn(2)], T0, at_once=True)       # at once: no settle round besides
    assert len(schedule.due(T0)) == 1 and schedule.next_at() == T0 + 25 * MS
