"""roles/autodiscover.py as a real process: bad frames and requests, and ``set_rcas``
(Set-MailboxDatabase -RpcClientAccessServer) on the loopback admin listener only.
"""

from __future__ import annotations

import socket

import pytest

from tests.roles_support import (
    FRAMING_ABUSE, Conn, Service, admin, assert_refused, autodiscover_config, free_ports, start_service,
    stop_services,
)
from tests.roles_support import started

__all__ = ["started"]  # the fixtures imported above

ANSWER = {"ok": True, "user": "alice", "db": "DB1", "server": "outlook.hq.lab.test"}


@pytest.fixture
def autodiscover(tmp_path, started) -> Service:
    port, admin_port = free_ports(2)
    return start_service("roles.autodiscover", autodiscover_config("ad1", port, admin_port, tmp_path),
                         tmp_path, started)


@pytest.fixture(scope="module")
def shared_autodiscover(tmp_path_factory):
    """One service for the tests that must change nothing (each checks the answer after)."""
    workdir = tmp_path_factory.mktemp("autodiscover")
    services: list[Service] = []
    try:
        port, admin_port = free_ports(2)
        yield start_service("roles.autodiscover", autodiscover_config("ad1", port, admin_port, workdir),
                            workdir, services)
    finally:
        stop_services(services)


def ask(port: int, user: str) -> dict | None:
    with Conn(port) as conn:
        return conn.call({"op": "autodiscover", "user": user})


@pytest.mark.parametrize("abuse", sorted(FRAMING_ABUSE))
def test_autodiscover_survives_bad_frames(shared_autodiscover, abuse):
    autodiscover = shared_autodiscover
    data, half_close = FRAMING_ABUSE[abuse]
    with Conn(autodiscover.port) as conn:
        conn.send_raw(data)
        if half_close:
            conn.sock.shutdown(socket.SHUT_WR)
        assert_refused(conn.recv(), "protocol")
    autodiscover.assert_alive()
    assert ask(autodiscover.port, "alice") == ANSWER


@pytest.mark.parametrize("message,error", [
    ({"op": "autodiscover", "user": "mallory"}, "unknown_user"),
    ({"op": "autodiscover", "user": ["alice"]}, "unknown_user"),
    ({"op": "autodiscover"}, "unknown_user"),
    ({"op": "frobnicate"}, "unknown_op"),
    ({"op": {"a": 1}}, "unknown_op"),
])
def test_autodiscover_refuses_bad_requests(shared_autodiscover, message, error):
    autodiscover = shared_autodiscover
    with Conn(autodiscover.port) as conn:
        assert_refused(conn.call(message), error)
    assert ask(autodiscover.port, "alice") == ANSWER


@pytest.mark.parametrize("message", [
    {"op": "set_rcas", "db": "DB9", "server": "x"},
    {"op": "set_rcas", "db": "DB1", "server": ""},
    {"op": "set_rcas", "db": "DB1", "server": 7},
    {"op": "set_rcas", "db": "DB1", "server": "x" * 256},
    {"op": "set_rcas", "db": ["DB1"], "server": "x"},
    {"op": "set_rcas", "server": "x"},
])
def test_set_rcas_refuses_bad_requests(shared_autodiscover, message):
    autodiscover = shared_autodiscover
    assert admin(autodiscover, message, expect_ok=False)["error"] == "bad_request"
    for other in ({"op": "autodiscover", "user": "alice"}, {"op": "frobnicate"}, {}):
        assert admin(autodiscover, other, expect_ok=False)["error"] == "unknown_op"
    assert ask(autodiscover.port, "alice") == ANSWER
    assert autodiscover.events("rcas_changed") == []


def test_set_rcas_on_the_service_port_changes_nothing(autodiscover):
    # Old behaviour: set_rcas was served on the service port: any client host could point
    # every Outlook profile of a database at a server of its choosing.
    with Conn(autodiscover.port) as conn:
        assert_refused(conn.call({"op": "set_rcas", "db": "DB1", "server": "evil.example"}), "unknown_op")
    assert ask(autodiscover.port, "alice") == ANSWER
    assert autodiscover.events("rcas_changed") == []


def test_set_rcas_on_the_admin_port_changes_the_answer(autodiscover):
    assert admin(autodiscover, {"op": "set_rcas", "db": "DB1", "server": "cas2.lab.test"}) == \
        {"ok": True, "db": "DB1", "server": "cas2.lab.test"}
    assert ask(autodiscover.port, "alice") == {**ANSWER, "server": "cas2.lab.test"}
    [changed] = autodiscover.events("rcas_changed")
    assert (changed["db"], changed["server"], changed["previous"]) == ("DB1", "cas2.lab.test", "outlook.hq.lab.test")
