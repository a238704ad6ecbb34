"""The typed context of one scenario run: what the runner, the modes and the faults share.
What only a mode needs during a run (Windows NLB's agents, the SDN NLB's health socket)
is its own instance's, not a field here.

It replaces a bag of string keys with named fields whose writer and readers are stated:

    field               written by                       read by
    spec, plan, lab     scenario.lab_up                  everyone
    mode                scenario.lab_up (mode_for)       scenario, faults (drain, rejoin), live lab
    databases           services.start_mailboxes         faults (Active Manager), metrics records
    rcas                services.start_autodiscover      faults.rebind
    dns_server          services.start_dns               modes (client targets)
    nlb_api_socket      RunContext (bound on creation)   scenario.start_controller (handed to the controller)
    nlb_api_port        its port                         modes.sdn_nlb, bench, live lab
    nlb_token_file()    modes.sdn_nlb (config)           the controller, `caslab nlb --token-file`
    controller          scenario.start_controller        faults.controller_crash
    restart_controller  scenario.start_controller        faults.controller_crash
    timers              faults (delayed actions)         scenario (cancelled at teardown)
    placement           caslab.network.hypervisor (start, move)  caslab.network.hypervisor, faults.vm_move
    tls                 http_services.prepare_tls        services (CAS), modes (HAProxy), HTTP clients
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import sqlite3
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from caslab.network.netlab import LabNetwork, LabProcess
from caslab.network.ofchannel import listening_socket, write_private
from labcommon.catalogue import HTTP_REQUEST, OP
from labcommon.programs import Program, config_json
from topologies.plan import LabPlan

PYTHON = sys.executable


@dataclass
class DatabaseLayout:
    """One mailbox database of the DAG: its copies (servers) and which one is active."""

    active: str
    copies: list[str]


@dataclass
class RunContext:
    """Everything one scenario run shares (see the module docstring for who writes what)."""

    spec: dict[str, Any]
    plan: LabPlan
    lab: LabNetwork
    raw_dir: Path
    log: Any
    repetition: int = 0
    mode: Any = None  # this run's instance of its mode (caslab.modes.mode_for)
    # the admin API's socket, bound and listening now: no other user can take its port
    # before the controller serves on it (and be handed the token)
    nlb_api_socket: socket.socket | None = field(default_factory=listening_socket)
    nlb_api_token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    controller: LabProcess | None = None
    restart_controller: Callable[[], None] | None = None
    dns_server: str | None = None
    databases: dict[str, DatabaseLayout] = field(default_factory=dict)
    rcas: dict[str, str] = field(default_factory=dict)
    timers: list[threading.Timer] = field(default_factory=list)
    placement: dict[str, str] = field(default_factory=dict)
    tls: Any = None  # caslab.network.tls.TlsFiles when the run has HTTPS services
    _socket_dir: Path | None = None
    _store_dir: Path | None = None
    _busiest: str | None = None

    @property
    def nlb_api_port(self) -> int | None:
        return self.nlb_api_socket.getsockname()[1] if self.nlb_api_socket is not None else None

    def nlb_token_file(self) -> Path:
        """The admin API's token in a 0600 file of the run's registry entry (under
        /run/caslab, root's; removed at teardown): never in a config or on a command line."""
        path = self.lab.record.folder / "nlb-token"
        if not path.exists():
            write_private(path, f"{self.nlb_api_token}\n".encode())
        return path

    def store_dir(self) -> Path:
        """Where the mailbox copies keep their SQLite stores while the lab runs: a local
        scratch folder (``CASLAB_SCRATCH``, else the system's temporary folder), never the
        result folder, which may sit on a VM's synced folder where SQLite's WAL does not
        work. ``keep_stores`` moves them into ``raw/<run>/store`` at teardown."""
        if self._store_dir is None:
            scratch = os.environ.get("CASLAB_SCRATCH") or None
            if scratch:
                Path(scratch).mkdir(parents=True, exist_ok=True)
            self._store_dir = Path(tempfile.mkdtemp(prefix="caslab-store-", dir=scratch))
        return self._store_dir

    def keep_stores(self) -> None:
        """After the mailboxes stopped: each store checkpointed into one self-contained
        file (no -wal / -shm left), copied to ``raw/<run>/store``, the scratch removed."""
        if self._store_dir is None:
            return
        for db in sorted(self._store_dir.rglob("*.sqlite")):
            try:
                conn = sqlite3.connect(db)
                try:
                    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                    conn.execute("PRAGMA journal_mode=DELETE")
                finally:
                    conn.close()
            except sqlite3.Error:
                continue  # copied as it is, with its -wal beside it
        shutil.copytree(self._store_dir, self.raw_dir / "store", dirs_exist_ok=True)
        shutil.rmtree(self._store_dir, ignore_errors=True)
        self._store_dir = None

    def socket_dir(self) -> Path:
        """A short private folder for Unix sockets (their paths must stay under 108 bytes,
        which a deep result folder would not); removed by ``close``."""
        if self._socket_dir is None:
            self._socket_dir = Path(tempfile.mkdtemp(prefix="caslab-"))
        return self._socket_dir

    def arrays(self) -> dict[str, dict[str, str]]:
        """Site name -> {name, fqdn} of its CAS array (New-ClientAccessArray)."""
        configured = self.spec.get("arrays")
        if configured is None:
            return {s.name: {"name": f"{s.name}-Array", "fqdn": s.array_fqdn} for s in self.plan.sites
                    if self.plan.by_role("cas", s.name)}
        return {a["site"]: {"name": a["name"], "fqdn": a["fqdn"], **({"records": a["records"]} if a.get("records")
                                                                     else {})} for a in configured}

    def events_path(self, source: str) -> str:
        return str(self.raw_dir / f"{source}.jsonl")

    def write_config(self, name: str, config: dict[str, Any] | str) -> Path:
        path = self.raw_dir / "config" / f"{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(config if isinstance(config, str) else json.dumps(config, indent=1, sort_keys=True))
        return path

    def start_program(self, program: Program, host: str, config: Any, name: str | None = None) -> LabProcess:
        """Run one of the catalogue's programs inside a host: ``python -m <module> CONFIG``
        (an argument list, never a shell), its config checked against its record first;
        named after its host unless ``name`` says otherwise."""
        name = name or program.process_name(host)
        path = self.write_config(name, config_json(program, config))
        return self.lab.popen_in(host, name, [PYTHON, "-m", program.module, str(path)], program=program)

    def start_tool(self, program: Program, host: str, argv: list[str],
                   on_line: Callable[[int, str], None] | None = None) -> LabProcess:
        """Run one of the catalogue's outside tools (dnsmasq, HAProxy, tcpdump) in a host."""
        return self.lab.popen_in(host, program.process_name(host), argv, program=program, on_line=on_line)

    def sessions_per_cas(self, tail_bytes: int = 262_144) -> dict[str, int]:
        """Which CAS each client session used last (from the end of the client logs)."""
        last: dict[str, str] = {}
        sources = [h.name for h in self.plan.by_role("client")]
        sources += [f"{h.name}-http" for h in self.plan.hosts if h.role in ("client", "external")]
        for source in sources:
            path = self.raw_dir / f"{source}.jsonl"
            if not path.exists():
                continue
            with open(path, "rb") as handle:
                handle.seek(max(0, path.stat().st_size - tail_bytes))
                lines = handle.read().splitlines()[1:]
            for line in lines:
                try:
                    e = json.loads(line)
                except ValueError:
                    continue
                if e.get("ev") in (OP, HTTP_REQUEST) and e.get("ok") and isinstance(e.get("cas"), str):
                    last[e["session"]] = e["cas"]
        counts: dict[str, int] = {}
        for cas in last.values():
            counts[cas] = counts.get(cas, 0) + 1
        return counts

    def busiest_cas(self) -> str:
        """A fault's ``@busiest`` target: the CAS serving the most sessions when the first
        fault naming it fires; later faults of the run naming it get the same CAS (so a
        drain and its rejoin act on one)."""
        if self._busiest is None:
            counts = self.sessions_per_cas()
            names = [h.name for h in self.plan.by_role("cas", self.plan.sites[0].name)]
            self._busiest = max(names, key=lambda name: (counts.get(name, 0), -names.index(name)))
        return self._busiest

    def later(self, delay_s: float, action: Callable[[], None]) -> threading.Timer:
        """Run an action after a delay (cancelled at teardown if the run ends first)."""
        timer = threading.Timer(delay_s, action)
        timer.daemon = True
        self.timers.append(timer)
        timer.start()
        return timer

    def close(self) -> None:
        for timer in self.timers:
            timer.cancel()
        if self.nlb_api_socket is not None:
            self.nlb_api_socket.close()
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
