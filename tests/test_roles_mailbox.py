"""roles/mailbox.py as a real process: client, replication and admin requests abused.

Clients (a CAS) send, read and sync on the active copy; ``replicate`` and ``fetch`` are
taken only from the configured peers' addresses (here 127.0.0.1, through a peer in the
config; a client bound to 127.0.0.2 is not a peer); admin ops only on the loopback admin
listener.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.roles_support import (
    NOT_A_PEER, Conn, Service, Stack, admin, assert_refused, db_status, free_ports, mailbox_config, send_direct,
    start_service, stored_ids,
)
from tests.roles_support import shared_stack, stack, started

__all__ = ["shared_stack", "stack", "started"]  # the fixtures imported above


def row(seq: int, msg_id: str | None = None, user: str = "alice") -> dict:
    return {"msg_id": msg_id or f"r-{seq}", "seq": seq, "user": user, "folder": "Inbox", "subject": ""}


@pytest.fixture
def passive(tmp_path, started) -> Service:
    """mbxp: DB1 passive, its peer on 127.0.0.1 (nothing listens there)."""
    port, admin_port, peer = free_ports(3)
    return start_service("roles.mailbox", mailbox_config("mbxp", port, admin_port, tmp_path, active=False,
                                                         peers=[peer]), tmp_path, started)


# ---- protocol abuse ------------------------------------------------------------------

def mbx_no_db(stack: Stack, conn: Conn) -> None:
    assert_refused(conn.call({"op": "send", "user": "alice", "msg_id": "m"}), "unknown_db")
    assert_refused(conn.call({"op": "send", "user": "alice", "msg_id": "m", "db": ["DB1"]}), "unknown_db")
    assert_refused(conn.call({"op": "send", "user": "alice", "msg_id": "m", "db": "DB9"}), "unknown_db")


def mbx_unknown_op(stack: Stack, conn: Conn) -> None:
    assert_refused(conn.call({"op": "frobnicate", "db": "DB1", "user": "alice"}), "unknown_op")
    assert_refused(conn.call({"op": "frobnicate"}), "unknown_db")
    assert_refused(conn.call({"db": "DB1", "user": "alice"}), "unknown_op")


def mbx_send_without_msg_id(stack: Stack, conn: Conn) -> None:
    assert_refused(conn.call({"op": "send", "db": "DB1", "user": "alice"}), "bad_request")
    assert_refused(conn.call({"op": "send", "db": "DB1", "user": "alice", "msg_id": 7}), "bad_request")
    assert_refused(conn.call({"op": "send", "db": "DB1", "msg_id": "m"}), "bad_request")  # no user
    assert_refused(conn.call({"op": "read", "db": "DB1", "user": None}), "bad_request")


def mbx_replicate_junk_shapes(stack: Stack, conn: Conn) -> None:
    before = stored_ids(stack.store_dir, "DB2")
    for rows in ("rows", None, 42, {"msg_id": "a", "user": "b", "seq": 1}, [1, 2, 3], [None], [["a", "b"]],
                 [{"msg_id": "only-id", "seq": 1}], [{"user": "only-user", "seq": 1}],
                 [{"msg_id": "no-seq", "user": "u"}], [row(1), "junk"]):
        assert_refused(conn.call({"op": "replicate", "db": "DB2", "rows": rows, "head": 1}), "bad_request")
    for seq in (0, -1, True, "1", 1.0, 2**62, None):
        assert_refused(conn.call({"op": "replicate", "db": "DB2", "rows": [{**row(1), "seq": seq}], "head": 1}),
                       "bad_request")
    for head in (None, "1", [1]):
        assert_refused(conn.call({"op": "replicate", "db": "DB2", "rows": [row(1)], "head": head}), "bad_request")
    assert_refused(conn.call({"op": "replicate", "db": "DB2", "rows": [row(1)]}), "bad_request")  # no head
    assert_refused(conn.call({"op": "replicate", "db": "DB9", "rows": [], "head": 0}), "unknown_db")
    assert_refused(conn.call({"op": "replicate", "rows": [row(1)], "head": 1}), "unknown_db")
    assert stored_ids(stack.store_dir, "DB2") == before, "a refused replicate stored rows"


def mbx_replicate_junk_values(stack: Stack, conn: Conn) -> None:
    """Rows of the right shape whose values SQLite cannot bind: refused or closed."""
    before = stored_ids(stack.store_dir, "DB2")
    for bad in ({**row(1, "j-folder-dict"), "folder": {"x": 1}},
                {**row(1), "msg_id": ["j", "list"]},
                {**row(1, "j-subject-list"), "subject": [1, 2]}):
        with Conn(stack.mailbox.port) as fresh:  # the mailbox may close each one
            assert_refused(fresh.call({"op": "replicate", "db": "DB2", "rows": [bad], "head": 1}))
    # the original connection was untouched by the others
    assert conn.call({"op": "read", "db": "DB1", "user": "alice"})["ok"] is True
    assert stored_ids(stack.store_dir, "DB2") == before, "a refused replicate stored rows"


def mbx_fetch_junk(stack: Stack, conn: Conn) -> None:
    for after in (None, "0", [0], 1.5):
        assert_refused(conn.call({"op": "fetch", "db": "DB1", "after": after}), "bad_request")
    assert_refused(conn.call({"op": "fetch", "after": 0}), "unknown_db")
    with Conn(stack.mailbox.port) as fresh:  # too large for SQLite: refused or closed
        assert_refused(fresh.call({"op": "fetch", "db": "DB1", "after": 2**70}))


def mbx_admin_ops_on_the_service_port(stack: Stack, conn: Conn) -> None:
    # Old behaviour: status, activate and deactivate were served on the service port, to
    # any host that could reach it.
    for message in ({"op": "deactivate", "db": "DB1"}, {"op": "deactivate", "db": "DB1", "user": "alice"},
                    {"op": "activate", "db": "DB2", "user": "alice"}, {"op": "activate", "db": "DB2"},
                    {"op": "status"}, {"op": "status", "db": "DB1", "user": "alice"}):
        assert_refused(conn.call(message), "unknown_op", "not_active", "bad_request", "unknown_db")
    assert conn.call({"op": "deactivate", "db": "DB1", "user": "alice"})["error"] == "unknown_op"
    assert conn.call({"op": "activate", "db": "DB2", "user": "alice"})["error"] == "not_active"
    assert db_status(stack.mailbox, "DB1")["active"] is True
    assert db_status(stack.mailbox, "DB2")["active"] is False


MAILBOX_ABUSE: dict[str, Callable[[Stack, Conn], None]] = {
    "no_or_unknown_db": mbx_no_db,
    "unknown_op": mbx_unknown_op,
    "send_without_msg_id_or_user": mbx_send_without_msg_id,
    "replicate_junk_shapes": mbx_replicate_junk_shapes,
    "replicate_junk_values": mbx_replicate_junk_values,
    "fetch_junk": mbx_fetch_junk,
    "admin_ops_on_the_service_port": mbx_admin_ops_on_the_service_port,
}


@pytest.mark.parametrize("abuse", list(MAILBOX_ABUSE))
def test_mailbox_protocol_abuse(stack, abuse):
    with Conn(stack.mailbox.port) as conn:
        MAILBOX_ABUSE[abuse](stack, conn)
    stack.assert_healthy()


@pytest.mark.parametrize("bad", [{**row(1), "msg_id": None}, {**row(1, "null-user"), "user": None}],
                         ids=["null_msg_id", "null_user"])
def test_mailbox_replicate_refuses_null_fields(stack, bad):
    with Conn(stack.mailbox.port) as conn:
        reply = conn.call({"op": "replicate", "db": "DB2", "rows": [bad], "head": 1})
    stack.assert_healthy()
    assert_refused(reply, "bad_request")
    assert None not in stored_ids(stack.store_dir, "DB2"), "a row with a NULL msg_id was stored"


# ---- replication: peers only, strictly in order --------------------------------------

@pytest.mark.parametrize("op", ["replicate", "fetch"])
def test_replication_ops_from_a_non_peer_are_refused(passive, op):
    # Old behaviour: any host that reached the port could write rows into a copy (or read them all).
    message = ({"op": "replicate", "db": "DB1", "rows": [row(1, "forged")], "head": 1} if op == "replicate"
               else {"op": "fetch", "db": "DB1", "after": 0})
    with Conn(passive.port, source=NOT_A_PEER) as conn:
        assert conn.call(message) == {"ok": False, "error": "not_a_peer"}
    with Conn(passive.port) as conn:  # 127.0.0.1 is a peer's address
        assert conn.call(message)["ok"] is True
    assert db_status(passive) == {"active": False, "last_seq": 1 if op == "replicate" else 0, "behind": 0}


def test_passive_copy_applies_rows_strictly_in_order(passive):
    # Old behaviour: rows had no log position; a copy stored whatever came, in any order,
    # and could not tell that it missed some.
    with Conn(passive.port) as conn:
        assert conn.call({"op": "replicate", "db": "DB1", "rows": [row(1), row(2)], "head": 2}) == \
            {"ok": True, "last_seq": 2}
        # a gap: nothing applied, the copy says where it is and knows what it lacks
        assert conn.call({"op": "replicate", "db": "DB1", "rows": [row(4), row(5)], "head": 5}) == \
            {"ok": False, "error": "gap", "last_seq": 2}
        assert db_status(passive) == {"active": False, "last_seq": 2, "behind": 3}
        # a gap inside one frame is refused whole
        assert conn.call({"op": "replicate", "db": "DB1", "rows": [row(3), row(5)], "head": 5})["error"] == "gap"
        # replays are no-ops, rows out of order in a frame are applied in order
        assert conn.call({"op": "replicate", "db": "DB1", "rows": [row(2), row(1)], "head": 5}) == \
            {"ok": True, "last_seq": 2}
        assert conn.call({"op": "replicate", "db": "DB1", "rows": [row(5), row(3), row(4)], "head": 5}) == \
            {"ok": True, "last_seq": 5}
        # a heartbeat: no rows, the head only
        assert conn.call({"op": "replicate", "db": "DB1", "rows": [], "head": 7}) == {"ok": True, "last_seq": 5}
        assert conn.call({"op": "fetch", "db": "DB1", "after": 3}) == \
            {"ok": True, "rows": [row(4), row(5)], "head": 5}
    assert sorted(stored_ids(passive.store_dir)) == [f"r-{i}" for i in range(1, 6)]
    assert db_status(passive) == {"active": False, "last_seq": 5, "behind": 2}


def test_active_copy_refuses_replicated_rows(stack):
    """Two actives are never merged silently."""
    with Conn(stack.mailbox.port) as conn:
        head = db_status(stack.mailbox)["last_seq"]
        reply = conn.call({"op": "replicate", "db": "DB1", "rows": [row(head + 1, "from-another-active")],
                           "head": head + 1})
    assert reply == {"ok": False, "error": "active", "last_seq": head}
    assert "from-another-active" not in stored_ids(stack.store_dir)


def test_a_resent_msg_id_is_stored_once_and_uses_no_log_position(stack):
    # Old behaviour (and the new roles before the fix in roles/dag.py): a send the CAS
    # retried after a mailbox timeout reused its msg_id; INSERT OR IGNORE dropped the row but
    # the copy still took the next position, a hole no passive copy could ever apply past.
    with Conn(stack.mailbox.port) as conn:
        head = db_status(stack.mailbox)["last_seq"]
        for msg_id in ("dup-1", "dup-1", "dup-2", "dup-1"):
            send_direct(conn, msg_id)
        assert db_status(stack.mailbox)["last_seq"] == head + 2
        assert conn.call({"op": "fetch", "db": "DB1", "after": head}) == \
            {"ok": True, "rows": [row(head + 1, "dup-1"), row(head + 2, "dup-2")],
             "head": head + 2}
    assert stored_ids(stack.store_dir).count("dup-1") == 1


# ---- client ops on a passive copy, admin ops on the admin port -----------------------

def test_passive_copy_refuses_client_ops(passive):
    with Conn(passive.port) as conn:
        for op in ("send", "read", "sync"):
            assert_refused(conn.call({"op": op, "db": "DB1", "user": "alice", "msg_id": "m"}), "not_active")
    assert admin(passive, {"op": "status"}) == \
        {"ok": True, "server": "mbxp", "databases": {"DB1": {"active": False, "last_seq": 0, "behind": 0, "heard_head": 0}}}
    assert stored_ids(passive.store_dir) == []
    passive.assert_alive()


def test_admin_ops_work_on_the_admin_port_only(passive):
    with Conn(passive.port) as conn:
        for message in ({"op": "activate", "db": "DB1"}, {"op": "activate", "db": "DB1", "user": "alice"}):
            assert_refused(conn.call(message), "not_active")
        assert_refused(conn.call({"op": "status"}), "unknown_db")
        assert_refused(conn.call({"op": "status", "db": "DB1", "user": "a"}), "not_active")
    assert db_status(passive)["active"] is False, "an activate on the service port took effect"
    assert admin(passive, {"op": "activate", "db": "DB1"}) == \
        {"ok": True, "active": True, "missing": 0, "last_seq": 0}
    with Conn(passive.port) as conn:
        send_direct(conn, "now-active")
        assert conn.call({"op": "deactivate", "db": "DB1", "user": "alice"})["error"] == "unknown_op"
    assert admin(passive, {"op": "deactivate", "db": "DB1"}) == {"ok": True, "active": False, "head": 1}
    with Conn(passive.port) as conn:
        assert_refused(conn.call({"op": "send", "db": "DB1", "user": "alice", "msg_id": "m"}), "not_active")
    for message, error in (({"op": "activate", "db": "DB9"}, "unknown_db"), ({"op": "frobnicate", "db": "DB1"},
                           "unknown_op"), ({"op": "activate"}, "unknown_db")):
        assert admin(passive, message, expect_ok=False)["error"] == error
    roles = [(e["active"], e.get("missing")) for e in passive.events("db_role")]
    assert roles == [(True, 0), (False, None)]


def test_admin_listener_refuses_bad_frames(passive):
    with Conn(passive.admin_port) as conn:
        conn.send_raw(b"\xff\xff\xff\xff")
        assert_refused(conn.recv(), "protocol")
    for message in ({"op": ["status"]}, {"op": None}, {}):
        assert admin(passive, message, expect_ok=False)["error"] in ("unknown_op", "unknown_db")
    passive.assert_alive()
    assert db_status(passive) == {"active": False, "last_seq": 0, "behind": 0}
