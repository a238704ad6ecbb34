"""The OpenFlow channel between the lab's switches and its controller, closed to everyone else.

A plain OpenFlow listener on 127.0.0.1 takes any local user's connection for a switch: a
FEATURES_REPLY with the lab switch's datapath id, and failover flow-mods go to the
impostor (issue 18). And a port chosen by binding, closing and binding again can be taken
by someone else in between. So:

* **The runner binds every listening socket itself** (``listening_socket``: 127.0.0.1, a
  port the kernel picks, listening at once) and hands it to the controller process
  (``--listen-fd``, the admin API's ``fd``). The port is never free for another user to
  take, not even while a crashed controller restarts: the runner still holds it.
* **Mutual TLS** (``ssl:`` controller targets): a CA made for this run signs one
  controller certificate (server authentication) and one switch certificate (client
  authentication), and its key is dropped once both are signed. Open vSwitch trusts only
  that CA for its controller and the controller only that CA for its switches. The keys
  are written 0600 in a 0700 folder of the run's registry entry (``/run/caslab/labs/<id>/
  tls``), which teardown and ``caslab cleanup`` remove.
* **Open vSwitch has one SSL configuration** for the whole daemon (the ``SSL`` row of its
  ``Open_vSwitch`` table; there is no per-bridge setting), which ovsdb-server's SSL
  remotes share. The lab sets its own for the run and restores whatever was there after.
  The lab's row carries what to restore in its ``external_ids`` (``caslab-saved``), so a
  SIGKILLed run's configuration is restored by the next run's sweep or ``caslab cleanup``,
  even after a reboot (the database persists, /run does not). A configuration that
  something else depends on (a bridge's ``ssl:`` controller, an SSL manager or ovsdb
  remote) is never replaced: the run stops before building anything and names it.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from caslab.base import system

from caslab.network import tls

MARK, SAVED = "caslab-lab", "caslab-saved"  # external_ids of the lab's own SSL row
SSL_COLUMNS = ("private_key", "certificate", "ca_cert", "bootstrap_ca_cert", "external_ids")


class ChannelError(RuntimeError):
    """The channel cannot be set up (Open vSwitch's SSL configuration is someone else's)."""


def listening_socket(backlog: int = 64) -> socket.socket:
    """A TCP socket on 127.0.0.1 that is bound and listening (the kernel picks the port)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", 0))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock


def write_private(path: Path, data: bytes) -> None:
    """Write a file that is 0600 from its first byte (never a symlink's target)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as handle:
        os.fchmod(handle.fileno(), 0o600)
        handle.write(data)


@dataclass(frozen=True)
class ChannelTls:
    """The run's OpenFlow TLS material (PEM files)."""

    folder: Path
    ca: Path
    controller_cert: Path
    controller_key: Path
    switch_cert: Path
    switch_key: Path


def make_channel_tls(folder: Path) -> ChannelTls:
    """A CA for this run's OpenFlow channel, and the controller's and the switches'
    certificates; the CA's key is not kept (nothing else will ever be signed)."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    ca_key, ca_cert = tls.make_ca("caslab OpenFlow channel CA")
    ctl_key, ctl_cert = tls.issue(ca_key, ca_cert, "caslab controller", ExtendedKeyUsageOID.SERVER_AUTH,
                                  addresses=["127.0.0.1"])
    sw_key, sw_cert = tls.issue(ca_key, ca_cert, "caslab switch", ExtendedKeyUsageOID.CLIENT_AUTH)
    files = ChannelTls(folder, folder / "ca.pem", folder / "controller.pem", folder / "controller.key",
                       folder / "switch.pem", folder / "switch.key")
    for path, data in ((files.ca, tls.pem_cert(ca_cert)), (files.controller_cert, tls.pem_cert(ctl_cert)),
                       (files.controller_key, _pem_key(ctl_key)), (files.switch_cert, tls.pem_cert(sw_cert)),
                       (files.switch_key, _pem_key(sw_key))):
        write_private(path, data)
    return files


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


# ---- Open vSwitch's one SSL configuration ------------------------------------------------------

def _vsctl(*args: str) -> str:
    res = system.run(["ovs-vsctl", "--timeout=5", *args])
    if res.returncode != 0:
        raise ChannelError(f"ovs-vsctl {' '.join(a for a in args if not a.startswith('-'))[:80]}: "
                           f"{res.stderr.strip() or 'failed'}")
    return res.stdout


def _atom(value: Any) -> Any:
    """An OVSDB JSON value as Python: maps to dicts, sets to lists, uuids to strings."""
    if isinstance(value, list) and len(value) == 2 and value[0] == "map":
        return {k: _atom(v) for k, v in value[1]}
    if isinstance(value, list) and len(value) == 2 and value[0] == "set":
        return [_atom(v) for v in value[1]]
    if isinstance(value, list) and len(value) == 2 and value[0] == "uuid":
        return value[1]
    return value


def _rows(table: str, columns: tuple[str, ...], record: str | None = None) -> list[dict[str, Any]]:
    out = json.loads(_vsctl("--format=json", f"--columns={','.join(columns)}", "list", table,
                            *([record] if record else [])))
    return [dict(zip(out["headings"], map(_atom, row))) for row in out["data"]]


def current_ssl() -> dict[str, Any] | None:
    """The SSL configuration Open vSwitch uses now (None: none)."""
    ref = _vsctl("get", "Open_vSwitch", ".", "ssl").strip()
    if ref in ("", "[]"):
        return None
    rows = _rows("SSL", SSL_COLUMNS, ref)
    return rows[0] if rows else None


def ssl_users() -> list[str]:
    """What on this machine connects with Open vSwitch's SSL configuration now."""
    users = [f"controller {r['target']}" for r in _rows("Controller", ("target",))
             if str(r["target"]).startswith(("ssl:", "pssl:"))]
    users += [f"manager {r['target']}" for r in _rows("Manager", ("target",))
              if str(r["target"]).startswith(("ssl:", "pssl:"))]
    res = system.run(["ovs-appctl", "--timeout=5", "-t", "ovsdb-server", "ovsdb-server/list-remotes"])
    users += [f"ovsdb-server remote {line.strip()}" for line in res.stdout.splitlines()
              if line.strip().startswith(("ssl:", "pssl:"))]
    return users


def _set_ssl(values: dict[str, Any]) -> None:
    """Make ``values`` (SSL_COLUMNS) the one SSL row Open vSwitch uses."""
    args = [f"{column}={json.dumps(str(values[column]))}" for column in ("private_key", "certificate", "ca_cert")]
    args.append(f"bootstrap_ca_cert={'true' if values.get('bootstrap_ca_cert') else 'false'}")
    args += [f"external_ids:{json.dumps(str(k))}={json.dumps(str(v))}"
             for k, v in (values.get("external_ids") or {}).items()]
    _vsctl("--", "--id=@ssl", "create", "SSL", *args, "--", "set", "Open_vSwitch", ".", "ssl=@ssl")


def _encode(saved: dict[str, Any] | None) -> str:
    return base64.urlsafe_b64encode(json.dumps(saved, sort_keys=True).encode()).decode()


def install_ssl(files: ChannelTls, owner: str) -> None:
    """The lab's SSL configuration for this run, remembering what to restore."""
    present = current_ssl()
    ids = (present or {}).get("external_ids") or {}
    if MARK in ids and SAVED in ids:
        saved = ids[SAVED]  # a dead run's, not swept yet: what it saved is still the original
    else:
        users = ssl_users() if present is not None else []
        if users:
            raise ChannelError(
                "Open vSwitch's one SSL configuration (ovs-vsctl get-ssl) is in use by "
                f"{', '.join(users)}; the lab's OpenFlow channel needs it for the run and would break them. "
                "Run the lab where nothing else uses Open vSwitch over SSL")
        saved = _encode(present)
    _set_ssl({"private_key": files.switch_key, "certificate": files.switch_cert, "ca_cert": files.ca,
              "bootstrap_ca_cert": False, "external_ids": {MARK: owner, SAVED: saved}})


def restore_ssl(owner: str | None = None) -> bool:
    """Put back what the lab's SSL row saved (``owner``: only that run's row; None: any
    lab's, for a sweep under the lab lock). True if something was restored."""
    present = current_ssl()
    ids = (present or {}).get("external_ids") or {}
    if MARK not in ids or (owner is not None and ids[MARK] != owner):
        return False
    try:
        saved = json.loads(base64.urlsafe_b64decode(ids.get(SAVED, "")))
    except ValueError:
        saved = None
    if isinstance(saved, dict):
        _set_ssl(saved)
    else:
        _vsctl("del-ssl")
    return True


# ---- the channel of one lab -------------------------------------------------------------------

@dataclass
class Channel:
    """One lab's OpenFlow channel: the listening socket and the TLS material, with Open
    vSwitch's SSL configuration set for it while it is open."""

    sock: socket.socket
    files: ChannelTls
    owner: str

    @classmethod
    def open(cls, folder: Path, owner: str) -> "Channel":
        files = make_channel_tls(folder)
        sock = listening_socket()
        try:
            install_ssl(files, owner)
        except BaseException:
            sock.close()
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return cls(sock, files, owner)

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]

    @property
    def target(self) -> str:
        """The switches' controller target (as Open vSwitch's Controller table has it)."""
        return f"ssl:127.0.0.1:{self.port}"

    def controller_args(self) -> list[str]:
        """The launcher's options: the inherited socket and the TLS files."""
        f = self.files
        return ["--listen-fd", str(self.sock.fileno()), "--ctl-privkey", str(f.controller_key),
                "--ctl-cert", str(f.controller_cert), "--ca-certs", str(f.ca),
                "--switch-uid", str(system.vswitchd_uid())]

    def close(self) -> None:
        """Restore Open vSwitch's SSL configuration, then drop the socket and the keys."""
        try:
            if system.ovs_running():
                restore_ssl(self.owner)
        finally:
            self.sock.close()
            shutil.rmtree(self.files.folder, ignore_errors=True)
