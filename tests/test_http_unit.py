"""The HTTP side's pure parts: the lab CA (a real TLS handshake on loopback), the [http]
spec rules, the Internet site in the plan, HAProxy's HTTPS configuration (checked by
HAProxy itself) and the HTTP metrics on hand-made events."""

from __future__ import annotations

import os

import shutil
import socket
import ssl
import subprocess
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from caslab.spec import experiment as spec_mod
from caslab.results.metrics.http import http_faults
from caslab.modes import MODES
from caslab.schema.fields import SpecError
from caslab.network.tls import make_lab_tls
from labcommon.catalogue import HTTP_AUTODISCOVER, HTTP_CLIENT_UP, HTTP_DOWN, HTTP_LOGON, HTTP_REQUEST
from topologies.plan import plan_from_topology

HTTP = {"owa_users_per_host": 1, "eas_devices_per_host": 1, "oa_profiles_per_host": 1}


def handshake(files, name: str) -> str:
    """Serve one TLS handshake on loopback with the lab certificate; connect as ``name``."""
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(files.cert, files.key)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve():
        conn, _ = listener.accept()
        try:
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1)
        except (ssl.SSLError, OSError):
            pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client_ctx = ssl.create_default_context(cafile=str(files.ca))
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            with client_ctx.wrap_socket(raw, server_hostname=name) as tls:
                return tls.version()
    finally:
        thread.join(5)
        listener.close()


def test_lab_ca_certificate_is_trusted_for_its_names_only(tmp_path):
    files = make_lab_tls(tmp_path, ["mail.lab.test", "autodiscover.lab.test", "cas1.lab.test"])
    assert handshake(files, "autodiscover.lab.test").startswith("TLS")
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        handshake(files, "evil.lab.test")
    assert oct(files.key.stat().st_mode & 0o777) == "0o600"


def test_private_keys_are_private_from_their_creation_and_kept_out_of_the_results(tmp_path, monkeypatch):
    # Old behaviour: the keys were written with the umask's mode (0644), made 0600 only
    # afterwards, and stayed in the run's raw/tls folder, which is handed to the user.
    monkeypatch.setattr(Path, "chmod", lambda self, mode: None)  # no late repair
    old = os.umask(0o022)
    try:
        files = make_lab_tls(tmp_path / "raw" / "tls", ["mail.lab.test"], key_folder=tmp_path / "private")
    finally:
        os.umask(old)
    for key in (files.key, files.combined):
        assert key.parent == tmp_path / "private" and oct(key.stat().st_mode & 0o777) == "0o600", key
    for path in (tmp_path / "raw").rglob("*"):
        assert path.is_dir() or b"PRIVATE KEY" not in path.read_bytes(), f"a private key in the results: {path}"
    assert handshake(files, "mail.lab.test").startswith("TLS")


def test_a_second_run_gets_its_own_ca(tmp_path):
    first = make_lab_tls(tmp_path / "a", ["mail.lab.test"])
    second = make_lab_tls(tmp_path / "b", ["mail.lab.test"])
    assert first.ca.read_bytes() != second.ca.read_bytes()
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(SimpleNamespace(cert=second.cert, key=second.key, ca=first.ca), "mail.lab.test")


def validate(**sections):
    return spec_mod.validate(sections, "t.toml")


def test_internet_site_has_only_external_clients():
    plan = plan_from_topology(validate(topology={"internet_client_hosts": 2}, http=HTTP)["topology"])
    internet = plan.sites[-1]
    assert internet.external and [h.role for h in plan.hosts if h.site == internet.name] == ["external"] * 2
    assert [h.name for h in plan.by_role("external")] == ["ext1", "ext2"]
    assert not plan.by_role("autodiscover", internet.name) and not plan.by_role("lb", internet.name)
    assert plan.routed


@pytest.mark.parametrize("sections, key", [
    ({"topology": {"internet_client_hosts": 1}}, "topology.internet_client_hosts"),
    ({"clients": {"sessions_per_host": 0}}, "clients.sessions_per_host"),
    ({"experiment": {"modes": ["sdn-nlb"]}, "http": {**HTTP, "internal": True, "lb_idle_timeout_s": 300}},
     "http.lb_idle_timeout_s"),
    ({"http": {**HTTP, "internal": True, "external_host": "cas1.lab.test"}}, "http.external_host"),
    ({"http": {"eas_heartbeat_s": 30}}, "http.eas_heartbeat_s"),
    ({"clients": {"distinct_source_ips": True, "sessions_per_host": 200},
      "http": {"owa_users_per_host": 60, "internal": True}}, "http"),
])
def test_http_spec_mistakes_are_refused_before_anything_runs(sections, key):
    with pytest.raises(SpecError, match=key.replace(".", r"\.")):
        validate(**sections)


def haproxy_config(mode: str, tmp_path: Path, idle_s: float = 300) -> str:
    spec = validate(experiment={"modes": [mode]}, topology={"cas": 2, "internet_client_hosts": 1},
                    http={**HTTP, "lb_idle_timeout_s": idle_s, "time_scale": 0.01})
    scenario = spec_mod.scenarios(spec)[0]
    plan = plan_from_topology(scenario["topology"])
    ctx = SimpleNamespace(spec=scenario, plan=plan, tls=make_lab_tls(tmp_path / "tls", ["mail.lab.test"]),
                          socket_dir=lambda: tmp_path)
    return MODES[mode]().config_text(ctx, plan.sites[0])


@pytest.mark.parametrize("mode, wanted", [
    ("haproxy", ["mode tcp", "balance source", "stick on src", "timeout server 3000ms", "timeout client 3000ms"]),
    ("haproxy-l7", ["mode http", "ssl crt", "cookie CASLB insert", "cookie cas2", "verifyhost cas1.lab.test",
                    "option httpchk GET /owa/auth/logon.aspx", "timeout server 3000ms"]),
])
def test_haproxy_https_configuration_is_valid_for_haproxy(tmp_path, mode, wanted):
    text = haproxy_config(mode, tmp_path)
    for line in wanted:
        assert line in text
    if shutil.which("haproxy") is None:
        pytest.skip("haproxy is not installed")
    path = tmp_path / "haproxy.cfg"
    path.write_text(text)
    checked = subprocess.run(["haproxy", "-c", "-f", str(path)], capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_no_idle_timeout_means_an_hour(tmp_path):
    assert "timeout server 1h" in haproxy_config("haproxy", tmp_path, idle_s=0)


# ---------------------------------------------------------------- metrics on hand-made events

MS = 1_000_000


def req(ts_ms, sid, protocol, cmd, ok, cas, lat_ms=5, status=200):
    return {"ts": ts_ms * MS, "src": "ext1-http", "ev": HTTP_REQUEST, "session": sid, "protocol": protocol,
            "cmd": cmd, "ok": ok, "status": status if ok else None, "lat_us": int(lat_ms * 1000), "cas": cas}


def events_of_a_failover():
    sessions = {"ext1-owa0": "owa", "ext1-eas0": "eas", "ext1-oa0": "oa", "ext1-owa1": "owa"}
    events = [{"ts": 0, "src": "ext1-http", "ev": HTTP_CLIENT_UP, "sessions": sessions, "external": True}]
    events += [{"ts": 1, "src": "ext1-http", "ev": HTTP_AUTODISCOVER, "session": s, "protocol": p, "ok": True,
                "via": "dns", "url": "https://mail.lab.test", "lat_us": 1, "cas": "cas2"} for s, p in sessions.items()]
    events += [req(100, "ext1-owa0", "owa", "read", True, "cas1"), req(100, "ext1-owa1", "owa", "read", True, "cas2"),
               req(100, "ext1-oa0", "oa", "read", True, "cas1"), req(100, "ext1-eas0", "eas", "sync", True, "cas1"),
               req(900, "ext1-eas0", "eas", "ping", True, "cas1", lat_ms=800)]
    # fault at 1000 ms: cas1 dies
    events += [req(1500, "ext1-owa0", "owa", "read", False, None, status=None),
               req(1600, "ext1-owa0", "owa", "read", False, "cas2", status=440),
               {"ts": 1650 * MS, "src": "ext1-http", "ev": HTTP_LOGON, "session": "ext1-owa0", "protocol": "owa",
                "cas": "cas2", "reauth": True, "prompt": True},
               req(1700, "ext1-owa0", "owa", "read", True, "cas2"), req(1700, "ext1-owa1", "owa", "read", True, "cas2"),
               req(2000, "ext1-eas0", "eas", "ping", False, None, lat_ms=1100),
               {"ts": 2000 * MS, "src": "ext1-http", "ev": HTTP_DOWN, "session": "ext1-eas0", "protocol": "eas",
                "reason": "timeout"},
               req(2300, "ext1-eas0", "eas", "sync", True, "cas3"),
               req(3100, "ext1-eas0", "eas", "ping", True, "cas3", lat_ms=800),  # started at 2300
               {"ts": 1200 * MS, "src": "ext1-http", "ev": HTTP_DOWN, "session": "ext1-oa0", "protocol": "oa",
                "reason": "timeout"}]
    return sorted(events, key=lambda e: e["ts"])


def by_session(run):
    return {s.session: s for s in run.sessions}


def test_a_failover_costs_owa_a_relogin_and_eas_a_long_poll():
    run = http_faults(events_of_a_failover(), [(0, "poweroff cas1", 1000 * MS, 4000 * MS, {"cas1"})])[0]
    s = by_session(run)
    assert s["ext1-owa0"].affected and s["ext1-owa0"].relogins == 1 and s["ext1-owa0"].prompts == 1
    assert s["ext1-owa0"].reconnect_ms == 700
    assert not s["ext1-owa1"].affected and s["ext1-owa1"].relogins == 0
    eas = s["ext1-eas0"]
    assert eas.affected and eas.pings_lost == 1 and eas.pings_reestablished == 1 and eas.reestablish_ms == 1300
    assert eas.latencies_ms == [5.0], "a Ping's hold is not a latency"
    oa = s["ext1-oa0"]
    assert oa.affected and oa.disconnects == 1 and not oa.recovered and oa.reconnect_ms is None, \
        "silence after a drop is never recovery"


def test_an_affected_session_served_late_but_never_dropped_is_undisturbed():
    events = [e for e in events_of_a_failover() if e.get("session") != "ext1-owa0" or e["ts"] < 1000 * MS]
    events.append(req(2500, "ext1-owa0", "owa", "read", True, "cas2", lat_ms=2000))
    s = by_session(http_faults(events, [(0, "poweroff cas1", 1000 * MS, 4000 * MS, {"cas1"})])[0])["ext1-owa0"]
    assert s.affected and s.undisturbed and not s.recovered and not s.disrupted and s.reconnect_ms is None


def test_a_run_without_faults_counts_disconnects_over_the_whole_window():
    run = http_faults(events_of_a_failover(), [(-1, "no fault", 0, 4000 * MS, set())])[0]
    s = by_session(run)
    assert s["ext1-oa0"].disconnects == 1 and not s["ext1-oa0"].affected
    assert all(x.configured for x in run.sessions)
    assert http_faults([e for e in events_of_a_failover() if e["ev"] != HTTP_CLIENT_UP], [(0, "x", 0, 1, set())]) == []


def test_a_send_answer_names_the_copies_that_did_not_confirm_it():
    from traffic.https import unreplicated_in

    assert unreplicated_in(b'{"ok": true, "unreplicated": ["10.0.2.12:7000"]}') == ["10.0.2.12:7000"]
    assert unreplicated_in(b'{"ok": true, "msg_id": "m1"}') is None
    assert unreplicated_in(b'{"ok": true, "unreplicated": []}') is None
    assert unreplicated_in(b'[' * 100_000) is None          # not JSON a parser survives: nothing claimed
    assert unreplicated_in(b'<html>') is None
