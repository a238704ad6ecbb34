"""roles/cas.py as a real process in front of a real mailbox: protocol abuse, replies that
must match their requests after a mailbox stall, and the bounded session table.
"""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from collections.abc import Callable

import pytest

from tests.roles_support import (
    CLOSED, PROXY_TIMEOUT_S, Conn, Stack, assert_refused, cas_config, free_ports, logon, mailbox_config,
    start_service, stored_ids,
)
from tests.roles_support import shared_stack, stack, started

__all__ = ["shared_stack", "stack", "started"]  # the fixtures imported above


# ---- protocol abuse ------------------------------------------------------------------

def cas_op_before_logon(stack: Stack, conn: Conn) -> None:
    msg_id = f"evil-{uuid.uuid4().hex}"
    assert_refused(conn.call({"op": "send", "msg_id": msg_id, "subject": "x", "user": "alice", "db": "DB1"}),
                   "auth_required")
    assert_refused(conn.call({"op": "read"}), "auth_required")
    assert_refused(conn.call({"op": "sync", "session": "nobody"}), "auth_required")
    assert msg_id not in stored_ids(stack.store_dir), "a send before logon reached the mailbox"


def cas_unknown_op_before_logon(stack: Stack, conn: Conn) -> None:
    assert_refused(conn.call({"op": "frobnicate"}), "auth_required")


def cas_unknown_op_after_logon(stack: Stack, conn: Conn) -> None:
    stack.logon(conn)
    assert_refused(conn.call({"op": "frobnicate"}), "unknown_op")
    for op in ("activate", "deactivate", "status", "set_rcas", "replicate", "fetch"):  # never proxied
        assert_refused(conn.call({"op": op, "db": "DB1"}), "unknown_op")
    assert_refused(conn.call({"no_op": True}), "unknown_op")


def cas_op_of_wrong_type_after_logon(stack: Stack, conn: Conn) -> None:
    stack.logon(conn)
    assert_refused(conn.call({"op": ["send"]}), "unknown_op", "bad_request")


def cas_logon_wrong_types(stack: Stack, conn: Conn) -> None:
    assert_refused(conn.call({"op": "logon", "session": 123, "user": "alice", "db": "DB1", "password": "pw-alice"}),
                   "bad_request")
    assert_refused(conn.call({"op": "logon", "session": "s", "user": ["alice"], "db": "DB1", "password": "x"}),
                   "bad_request")
    assert_refused(conn.call({"op": "logon", "session": "s", "user": "alice", "db": None, "password": "pw-alice"}),
                   "bad_request")
    assert_refused(conn.call({"op": "logon", "session": "s", "user": "alice", "db": {"DB1": 1},
                              "password": "pw-alice"}), "bad_request")
    assert_refused(conn.call({"op": "logon", "session": "s", "user": "alice", "db": "DB9", "password": "pw-alice"}),
                   "unknown_db")
    # a refused logon leaves the connection unauthenticated
    assert_refused(conn.call({"op": "read"}), "auth_required")
    # a wrong password (here of the wrong type) ends the connection
    reply = conn.call({"op": "logon", "session": "s", "user": "alice", "db": "DB1", "password": 12345})
    assert_refused(reply, "auth_failed")
    if reply is not CLOSED:
        assert conn.recv() is CLOSED, "the CAS kept the connection open after auth_failed"


def cas_resume_unknown_session(stack: Stack, conn: Conn) -> None:
    assert_refused(conn.call({"op": "resume", "session": f"never-{uuid.uuid4().hex}"}), "auth_required")
    assert_refused(conn.call({"op": "resume", "session": ["a", "list"]}), "auth_required")
    assert_refused(conn.call({"op": "resume"}), "auth_required")
    assert_refused(conn.call({"op": "send", "msg_id": "after-failed-resume"}), "auth_required")


def cas_send_without_msg_id(stack: Stack, conn: Conn) -> None:
    stack.logon(conn)
    begun = time.monotonic()
    assert_refused(conn.call({"op": "send", "subject": "no id"}, PROXY_TIMEOUT_S), "bad_request")
    assert_refused(conn.call({"op": "send", "msg_id": 42, "subject": "int id"}, PROXY_TIMEOUT_S), "bad_request")
    assert_refused(conn.call({"op": "send", "msg_id": None}, PROXY_TIMEOUT_S), "bad_request")
    assert time.monotonic() - begun < 3, "bad_request from the mailbox took the CAS's whole locate deadline"
    # the session is still good after the refused sends
    assert conn.call({"op": "send", "msg_id": f"ok-{uuid.uuid4().hex}"}, PROXY_TIMEOUT_S)["ok"] is True


def cas_client_cannot_pick_user_or_db(stack: Stack, conn: Conn) -> None:
    """Fields the CAS owns (user, db) are overwritten from the session, not taken from the client."""
    stack.logon(conn, user="mallory")
    msg_id = f"spoof-{uuid.uuid4().hex}"
    reply = conn.call({"op": "send", "msg_id": msg_id, "user": "alice", "db": "DB9"}, PROXY_TIMEOUT_S)
    assert reply and reply.get("ok") is True, reply
    conn_db = sqlite3.connect(stack.store_dir / "DB1.sqlite", timeout=5)
    try:
        owner = conn_db.execute("SELECT user FROM messages WHERE msg_id=?", (msg_id,)).fetchone()
    finally:
        conn_db.close()
    assert owner == ("mallory",)


CAS_ABUSE: dict[str, Callable[[Stack, Conn], None]] = {
    "op_before_logon": cas_op_before_logon,
    "unknown_op_before_logon": cas_unknown_op_before_logon,
    "unknown_op_after_logon": cas_unknown_op_after_logon,
    "op_of_wrong_type_after_logon": cas_op_of_wrong_type_after_logon,
    "logon_wrong_types": cas_logon_wrong_types,
    "resume_unknown_session": cas_resume_unknown_session,
    "send_without_msg_id": cas_send_without_msg_id,
    "client_cannot_pick_user_or_db": cas_client_cannot_pick_user_or_db,
}


@pytest.mark.parametrize("abuse", list(CAS_ABUSE))
def test_cas_protocol_abuse(stack, abuse):
    with Conn(stack.cas.port, PROXY_TIMEOUT_S) as conn:
        CAS_ABUSE[abuse](stack, conn)
    stack.assert_healthy()


def test_cas_bad_field_in_proxied_request_is_a_prompt_bad_request(stack):
    with Conn(stack.cas.port, PROXY_TIMEOUT_S) as conn:
        stack.logon(conn)
        begun = time.monotonic()
        reply = conn.call({"op": "read", "folder": {"not": "a string"}}, PROXY_TIMEOUT_S)
        elapsed = time.monotonic() - begun
        assert_refused(reply)  # the loose contract holds either way
        assert reply is not CLOSED and reply.get("error") == "bad_request" and elapsed < 2, (reply, elapsed)
        # the session survives it
        assert conn.call({"op": "read"}, PROXY_TIMEOUT_S)["ok"] is True
    stack.assert_healthy()


# ---- stalls: replies must still match requests ---------------------------------------

def assert_replies_match(conn: Conn, acked: list[str], tag: str, rounds: int = 3) -> None:
    """Each send gets the ack for its own msg_id; each read counts exactly the acked ones."""
    for i in range(rounds):
        msg_id = f"{tag}-{i}"
        begun = time.monotonic()
        reply = conn.call({"op": "send", "msg_id": msg_id})
        elapsed = time.monotonic() - begun
        assert reply and reply.get("ok") is True, (msg_id, reply, elapsed)
        assert reply.get("msg_id") == msg_id, f"the ack for {msg_id} is someone else's reply: {reply}"
        assert elapsed < 2, f"send of {msg_id} took {elapsed:.1f} s"
        acked.append(msg_id)
        read = conn.call({"op": "read"})
        assert read and read.get("ok") is True and "count" in read, f"read got a reply that is not a read's: {read}"
        assert read["count"] == len(acked), (read, len(acked))


def test_cas_replies_match_requests_after_a_mailbox_stall(tmp_path, started):
    """The only mailbox stops for 0.5 s (a short freeze) while a send is in flight: the CAS
    gives up on it after 300 ms and sends it again, with the same msg_id."""
    mb_port, mb_admin, cas_port, cas_admin = free_ports(4)
    mailbox = start_service("roles.mailbox", mailbox_config("mbx1", mb_port, mb_admin, tmp_path), tmp_path, started)
    cas = start_service("roles.cas", cas_config("cas1", cas_port, cas_admin, tmp_path, [mb_port]), tmp_path, started)
    acked: list[str] = []
    with Conn(cas.port, PROXY_TIMEOUT_S) as conn:
        logon(conn, sid="s-stall")
        assert_replies_match(conn, acked, "before", rounds=1)
        mailbox.freeze()
        thaw = threading.Timer(0.5, mailbox.thaw)
        thaw.start()
        try:
            reply = conn.call({"op": "send", "msg_id": "during-stall"})
        finally:
            thaw.join()
        assert reply and reply.get("ok") is True and reply.get("msg_id") == "during-stall", reply
        acked.append("during-stall")
        assert_replies_match(conn, acked, "after")
    mailbox.assert_alive()
    # the resent message is stored once and took one log position (see test_roles_mailbox)
    assert sorted(stored_ids(mailbox.store_dir)) == sorted(acked)
    with Conn(mailbox.admin_port) as conn:
        assert conn.call({"op": "status"})["databases"]["DB1"]["last_seq"] == len(acked)


# ---- the session table is bounded --------------------------------------------------------

def test_cas_forgets_the_least_recently_used_session(tmp_path, started):
    # Old behaviour: the session table grew without bound (one entry per session id ever
    # logged on). And before the fix in roles/cas.py only a logon or resume counted as a
    # use, so the oldest logon was forgotten even while it was the session in use.
    mb_port, mb_admin, cas_port, cas_admin = free_ports(4)
    start_service("roles.mailbox", mailbox_config("mbx1", mb_port, mb_admin, tmp_path), tmp_path, started)
    cas = start_service("roles.cas", cas_config("cas1", cas_port, cas_admin, tmp_path, [mb_port], max_sessions=2),
                        tmp_path, started)
    with Conn(cas.port, PROXY_TIMEOUT_S) as one, Conn(cas.port, PROXY_TIMEOUT_S) as two, \
            Conn(cas.port, PROXY_TIMEOUT_S) as three:
        logon(one, sid="s-1")
        logon(two, sid="s-2")
        assert one.call({"op": "read"})["ok"] is True      # s-1 used: s-2 is now the least recently used
        logon(three, sid="s-3")                           # over max_sessions: s-2 is forgotten
        assert_refused(two.call({"op": "read"}), "auth_required")
        assert one.call({"op": "read"})["ok"] is True
        assert three.call({"op": "send", "msg_id": "from-s-3"})["ok"] is True
        with Conn(cas.port) as other:
            assert_refused(other.call({"op": "resume", "session": "s-2"}), "auth_required")
            assert other.call({"op": "resume", "session": "s-1"})["ok"] is True  # s-1 used again: s-3 is LRU
        # the forgotten session logs on again (forgetting s-3) and carries on
        logon(two, sid="s-2")
        assert two.call({"op": "read"})["ok"] is True
        assert_refused(three.call({"op": "read"}), "auth_required")
        assert one.call({"op": "read"})["ok"] is True
