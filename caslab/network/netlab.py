"""The live network: Mininet hosts on Open vSwitch, the lab's processes, and teardown.

Teardown is the rule of this machine: only what the lab made is removed. Mininet's own
``stop()`` ends its node shells by pid and deletes its bridges; the lab's extra processes
(services, controller, clients) are ended by the pids recorded when they started; a final
sweep deletes the plan's own bridge and interface names if anything survived. Never
Mininet's global clean-up, never a kill by process name.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import IO, Callable

from caslab.base import interrupts, system
from caslab.network.ofchannel import Channel, ChannelError
from caslab.base.procstat import process_cpu_ms
from caslab.network.registry import LabRecord
from caslab.network.cleanup import sweep_dead_labs
from caslab.network.machine import LabLock, existing_bridges, existing_links, flush_lab_conntrack, sweep_lab_names
from caslab.base.waits import LabError  # noqa: F401 (where most of the engine imports it from)
from labcommon.programs import CONTROLLER, Program
from topologies.plan import LabPlan

AFXDP_PORT = "afxdp-nonpmd"  # AF_XDP sockets polled by Open vSwitch's main thread: no busy-polling core


@dataclass(eq=False)
class LabProcess:
    """A process the lab started, in a host's namespace or in the root namespace.

    It is reaped in ``alive`` and nowhere else (``stop`` and ``signal`` go through it),
    and only after its final CPU was read from its zombie (``final_cpu_ms``): the cost
    meter (``caslab.run.cost``) counts a process that died in the window up to its death.
    """

    name: str
    host: str | None
    popen: subprocess.Popen
    program: Program  # the catalogue's record it was started from (labcommon.programs)
    log: IO | None = None
    ended_on_purpose: bool = False  # the lab (a fault, teardown) stopped or killed it
    started_ns: int = field(default_factory=time.monotonic_ns)  # when the lab started it
    final_cpu_ms: float | None = None  # its whole CPU, read from its zombie before it was reaped
    _reaping: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def kind(self) -> str:
        """What its CPU counts under (caslab.run.cost): its program's kind."""
        return self.program.kind

    def alive(self) -> bool:
        """Whether it still runs; an ended process is reaped here, its final CPU kept."""
        with self._reaping:
            if self.popen.returncode is not None:
                return False
            try:  # WNOWAIT: has it ended? (it stays a zombie, its /proc/<pid>/stat readable)
                if os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
                    return True
                self.final_cpu_ms = process_cpu_ms(self.pid)  # the zombie's: its final account
            except ChildProcessError:
                pass  # reaped behind the lab's back: its final CPU is unknown
            self.popen.poll()
            return self.popen.returncode is None

    def cpu_ms(self) -> float | None:
        """Its CPU so far: read now while it runs, its final CPU once it ended."""
        with self._reaping:  # not reaped while this reads: the pid is still this process
            return process_cpu_ms(self.pid) if self.popen.returncode is None else self.final_cpu_ms

    def signal(self, signum: int) -> None:
        """Signal the process group (mnexec -d and start_new_session give each its own)."""
        if signum in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT):
            self.ended_on_purpose = True
        with self._reaping:  # not reaped meanwhile: the group is still this process's
            if self.popen.returncode is None:
                try:
                    os.killpg(self.popen.pid, signum)
                except ProcessLookupError:
                    pass

    def wait(self, timeout_s: float) -> bool:
        """Wait up to timeout_s for it to end; True when it did."""
        deadline, delay = time.monotonic() + timeout_s, 0.0005
        while self.alive():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            time.sleep(min(delay, remaining))
            delay = min(2 * delay, 0.05)
        return True

    def stop(self, grace_s: float = 2.0) -> None:
        self.signal(signal.SIGCONT)  # a frozen process cannot act on SIGTERM
        self.signal(signal.SIGTERM)
        if not self.wait(grace_s):
            self.signal(signal.SIGKILL)
            if not self.wait(5):
                raise LabError(f"{self.name} (pid {self.pid}) still runs 5 s after SIGKILL")
        if self.log is not None:
            self.log.close()


@dataclass
class LabNetwork:
    """Builds, runs and always tears down one Mininet network from a ``LabPlan``."""

    plan: LabPlan
    run_dir: Path
    datapath: str = field(default_factory=system.preferred_datapath)
    topo_options: dict = field(default_factory=dict)
    net: object = None
    processes: list[LabProcess] = field(default_factory=list)
    lock: LabLock = field(default_factory=LabLock)
    record: LabRecord | None = None
    channel: Channel | None = None  # the OpenFlow channel (caslab/network/ofchannel.py), from build() on
    # the start-up: programs start in their records' order (labcommon/programs.py) until
    # ``started_up``; afterwards (faults, restarts, the live lab) in any order
    starting: bool = True
    last_order: int | None = None
    switch_ports: str = "system"  # asked for: "system" or "afxdp" (topology.switch_ports)
    ports_used: str = "system"  # what the hosts' switch ports are: "system" or AFXDP_PORT (some may fall back)
    port_notices: list[str] = field(default_factory=list)  # why a port is not what was asked for

    @property
    def controller_port(self) -> int | None:
        return self.channel.port if self.channel is not None else None

    # ---- build -----------------------------------------------------------------------

    def build(self) -> None:
        """Create hosts, links and interfaces (no switch running yet)."""
        from mininet.log import setLogLevel
        from mininet.net import Mininet
        from mininet.node import OVSSwitch, RemoteController

        from topologies.cas_array import CasArrayTopo

        setLogLevel("error")
        self.lock.acquire()
        self._sweep_dead_labs()
        clash = set(existing_bridges() + existing_links()) & set(self.plan.bridge_names())
        if clash:
            raise LabError(f"bridges {sorted(clash)} already exist: another caslab run is active, "
                           f"or a killed run left them (remove with: caslab cleanup)")
        self.record = LabRecord.create(self.run_dir, self.plan.bridge_names(), self.datapath_name)
        try:
            self.channel = Channel.open(self.record.folder / "tls", owner=self.record.folder.name)
        except ChannelError as exc:
            raise LabError(str(exc)) from None
        # batch: Mininet then creates each bridge with one ovs-vsctl run as a process, not typed
        # into the switch's pty shell, whose line limit (4096 bytes) cut the command of a
        # switch with ~50 ports short: the bridge never existed (32 CAS and 12+ client hosts)
        self.ports_used = self._port_type()
        switch = partial(lab_switch_class(OVSSwitch, self.ports_used), datapath=self.datapath, failMode="secure",
                         protocols="OpenFlow13,OpenFlow15", reconnectms=1000, batch=True)
        controller = partial(RemoteController, ip="127.0.0.1", port=self.channel.port, protocol="ssl")
        self.net = Mininet(topo=CasArrayTopo(plan=self.plan, **self.topo_options), switch=switch, controller=controller,
                           build=False, autoSetMacs=False, waitConnected=False)
        self.net.build()
        for node in self.net.hosts:  # Mininet's node shells, as soon as they exist
            self.record.process(f"mininet:{node.name}", node.shell.pid, node.name)

    def _port_type(self) -> str:
        """The hosts' switch port type: AF_XDP where asked for and possible, else system."""
        if self.switch_ports != "afxdp":
            return "system"
        if self.datapath != "user":
            self.port_notices.append("afxdp switch ports skipped: they need Open vSwitch's userspace datapath, and "
                                     "this machine uses the kernel's")
        elif AFXDP_PORT not in system.ovs_interface_types():
            self.port_notices.append(f"afxdp switch ports skipped: this Open vSwitch has no {AFXDP_PORT} ports")
        else:
            return AFXDP_PORT
        return "system"

    def _ports_that_failed(self) -> None:
        """An AF_XDP port the kernel refused (no XDP on this veth) becomes a system port."""
        if self.ports_used != AFXDP_PORT:
            return
        rows = system.run(["ovs-vsctl", "--timeout=5", "--format=json", "--columns=name,type,error", "list",
                           "Interface"]).stdout
        failed = {}
        for name, type_, error in (json.loads(rows or '{"data": []}')["data"]):
            if type_ == AFXDP_PORT and isinstance(error, str) and error and self._is_lab_port(name):
                failed[name] = error
        for name in failed:
            system.run(["ovs-vsctl", "--timeout=5", "set", "Interface", name, "type=system", "--", "remove",
                        "Interface", name, "options", "xdp-mode"])
        if failed:
            first = next(iter(failed.items()))
            self.port_notices.append(f"{len(failed)} afxdp switch port(s) failed and run as system ports "
                                     f"(first: {first[0]}: {first[1]})")

    def _is_lab_port(self, name: str) -> bool:
        return any(name.startswith(f"{bridge}-eth") for bridge in self.plan.switch_names())

    def _sweep_dead_labs(self) -> None:
        """Under the lab lock no other lab runs: any ``clab<k>`` bridge, veth or recorded
        process still present belongs to a dead run (SIGKILL, machine restart). Remove it."""
        removed = []
        if sweep_dead_labs(say=removed.append):
            print(f"caslab: removed what a dead run left: {', '.join(removed)}", file=sys.stderr)

    def start(self) -> None:
        """Start the switches (the controller should already listen) and fix offload."""
        self.net.start()
        self._ports_that_failed()
        self._fix_offload()
        if self.plan.routed:
            self.run_in("r1", ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])

    def switch_port_name(self, host: str) -> str:
        """Name of the switch-side interface of a host's (first) link."""
        intf = self.node(host).intf()
        link = intf.link
        return (link.intf2 if link.intf1 is intf else link.intf1).name

    def _fix_offload(self) -> None:
        """The userspace datapath drops TCP with bad checksums: turn TX offload off on veths
        (not on the back end's: the kernel's bridge handles offloaded checksums)."""
        backend = set(self.plan.backend_switch_names())
        for node in self.net.hosts + self.net.switches:
            for intf in node.intfList():
                if intf.name == "lo" or not intf.link:
                    continue
                if {intf.link.intf1.node.name, intf.link.intf2.node.name} & backend:
                    continue
                self.run_at(None if node in self.net.switches else node.name, ["ethtool", "-K", intf.name, "tx", "off"])

    def node(self, name: str):
        return self.net.get(name)

    def host_interface(self, host: str) -> str:
        """The name of a host's (first) interface, inside its namespace."""
        return self.node(host).intf().name

    def link_ends(self, host: str) -> list[tuple[str | None, str]]:
        """(where, interface) of both ends of a host's link: the host's side and the switch's
        (None: the root namespace)."""
        return [(host, self.host_interface(host)), (None, self.switch_port_name(host))]

    def backend_link_ends(self, host: str) -> list[tuple[str | None, str]]:
        """(where, interface) of both ends of a server's back-end link, if it has one."""
        ends = []
        for intf in self.node(host).intfList()[1:]:
            link = intf.link
            other = link.intf2 if link is not None and link.intf1 is intf else (link.intf1 if link else None)
            if other is not None and other.node.name in self.plan.backend_switch_names():
                ends += [(host, intf.name), (None, other.name)]
        return ends

    @property
    def datapath_name(self) -> str:
        """The OVS datapath the lab's bridges live in (for dpctl commands)."""
        return "netdev@ovs-netdev" if self.datapath == "user" else "system@ovs-system"

    def router_port(self, site_index: int) -> tuple[str, str]:
        """(switch port name, router MAC) of the router's link into a site's switch."""
        intf = self.node("r1").intf(f"r1-eth{site_index}")
        other = intf.link.intf2 if intf.link.intf1 is intf else intf.link.intf1
        return other.name, intf.MAC()

    def set_link(self, host: str, up: bool, backend: bool = False) -> None:
        """A host's link up or down, both ends, as pulling the cable would: the switch's end
        first (that is what the switch notices), straight through netlink commands.
        ``backend``: its back-end link too (a powered-off server loses every NIC)."""
        state = "up" if up else "down"
        ends = self.link_ends(host) + (self.backend_link_ends(host) if backend else [])
        for where, intf in sorted(ends, key=lambda end: end[0] is not None):
            if where is None:
                system.set_link_state(intf, up)
            else:
                self.run_in(where, ["ip", "link", "set", "dev", intf, state])

    def run_in(self, host: str, argv: list[str], timeout_s: float = 10) -> tuple[int, str]:
        """Run a command inside a host's namespace: an argument list, never a shell.
        Returns (exit status, stdout + stderr)."""
        popen = self.node(host).popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL)
        try:
            out, _ = popen.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(popen.pid, signal.SIGKILL)
            out, _ = popen.communicate()
            return -9, out.decode(errors="replace")
        return popen.returncode, out.decode(errors="replace")

    def run_at(self, where: str | None, argv: list[str], timeout_s: float = 10) -> tuple[int, str]:
        """``run_in`` a host, or in the root namespace when ``where`` is None."""
        if where is not None:
            return self.run_in(where, argv, timeout_s)
        res = system.run(argv, timeout=timeout_s)
        return res.returncode, res.stdout + res.stderr

    def wait_connected(self, timeout_s: float = 20) -> None:
        """Poll until every switch has a live OpenFlow session to the controller."""
        deadline = time.monotonic() + timeout_s
        switches = self.plan.switch_names()
        while time.monotonic() < deadline:
            rows = system.run(["ovs-vsctl", "--timeout=3", "--columns=is_connected", "find", "Controller",
                               f"target=\"{self.channel.target}\""]).stdout
            connected = rows.count("true")
            if connected >= len(switches):
                return
            time.sleep(0.1)
        raise LabError(f"switches {switches} did not connect to the controller at {self.channel.target} "
                       f"within {timeout_s:.0f} s (see logs/controller.log)")

    # ---- processes ---------------------------------------------------------------------

    def _in_start_order(self, program: Program, name: str) -> None:
        """During the start-up a program may not start after one its record orders later:
        the catalogue's start order is the one every run keeps."""
        if not self.starting:
            return
        if self.last_order is not None and program.order < self.last_order:
            raise LabError(f"start-up out of order: {name} ({program.key}, order {program.order}) started after a "
                           f"program of order {self.last_order} (labcommon/programs.py declares the order)")
        self.last_order = program.order

    def started_up(self) -> None:
        """The start-up is over: from now on programs (re)start in any order."""
        self.starting = False

    def popen_in(self, host: str, name: str, argv: list[str], *, program: Program,
                 on_line: Callable[[int, str], None] | None = None) -> LabProcess:
        """Start argv (one of the catalogue's ``program``) inside a host's namespace; output
        goes to logs/<name>.log.

        With ``on_line``, each output line is also handed to it with the monotonic time it
        arrived (how a tool that only logs text, like HAProxy, becomes timed events).
        """
        self._in_start_order(program, name)
        log = self._log_file(name)
        stdout = subprocess.PIPE if on_line else log
        with interrupts.deferred():  # a Ctrl-C here must not leave an unrecorded process
            popen = self.node(host).popen(argv, stdout=stdout, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            proc = LabProcess(name, host, popen, program, log)
            self.processes.append(proc)
            self._register(proc)
        if on_line:
            threading.Thread(target=_pump_lines, args=(popen.stdout, log, on_line), daemon=True).start()
        return proc

    def popen_root(self, name: str, argv: list[str], *, program: Program, env: dict | None = None,
                   pass_fds: tuple[int, ...] = ()) -> LabProcess:
        """Start argv in the root namespace (the controller), in its own process group;
        ``pass_fds``: the listening sockets it inherits."""
        self._in_start_order(program, name)
        log = self._log_file(name)
        with interrupts.deferred():
            popen = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True, env={**os.environ, **(env or {})}, pass_fds=pass_fds)
            proc = LabProcess(name, None, popen, program, log)
            self.processes.append(proc)
            self._register(proc)
        return proc

    def popen_controller(self, app: str, env: dict | None = None, pass_fds: tuple[int, ...] = ()) -> LabProcess:
        """Start the controller app on the lab's OpenFlow channel (after ``build``): it
        inherits the listening socket and speaks TLS with the channel's certificates;
        ``pass_fds``: further sockets it inherits (the admin API's)."""
        argv = [sys.executable, "-m", CONTROLLER.module, *self.channel.controller_args(), app]
        return self.popen_root(CONTROLLER.process_name(""), argv, program=CONTROLLER, env=env,
                               pass_fds=(self.channel.sock.fileno(), *pass_fds))

    def _register(self, proc: LabProcess) -> None:
        """Record the process the moment it exists, so a hard-killed run can be cleaned up."""
        if self.record is not None:
            self.record.process(proc.name, proc.pid, proc.host)

    def _log_file(self, name: str) -> IO:
        logs = self.run_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        return open(logs / f"{name}.log", "ab")

    def processes_on(self, host: str) -> list[LabProcess]:
        return [p for p in self.processes if p.host == host]

    # ---- teardown ----------------------------------------------------------------------

    def stop(self) -> None:
        """End every lab process by pid, stop Mininet, then sweep the lab's own names."""
        errors = []
        for proc in reversed(self.processes):
            try:
                proc.stop()
            except Exception as exc:  # noqa: BLE001 - keep tearing down
                errors.append(f"{proc.name}: {exc}")
        if self.net is not None:
            shells = [n.shell for n in self.net.hosts + self.net.switches + self.net.controllers if n.shell]
            try:
                self.net.stop()
                for controller in self.net.controllers:  # RemoteController.stop() does nothing:
                    controller.terminate()               # end its shell and close its pty here
            except Exception as exc:  # noqa: BLE001
                errors.append(f"mininet: {exc}")
            for shell in shells:  # Mininet signals its node shells but does not wait for them
                try:
                    shell.wait(5)
                except subprocess.TimeoutExpired:
                    os.killpg(shell.pid, signal.SIGKILL)
                    shell.wait(5)
        sweep_lab_names(self.plan.bridge_names())
        flush_lab_conntrack(self.datapath_name, len(self.plan.sites))
        if self.channel is not None:
            try:
                self.channel.close()  # Open vSwitch's SSL configuration back as it was
            except ChannelError as exc:
                errors.append(f"OpenFlow channel: {exc}")
            self.channel = None
        if self.record is not None:
            self.record.remove()
        self.lock.release()
        if errors:
            raise LabError("teardown: " + "; ".join(errors))


def lab_switch_class(ovs_switch: type, port_type: str) -> type:
    """Mininet's OVSSwitch, its host-facing ports of ``port_type`` (a port to another switch,
    a hypervisor's uplink, stays a system port). Created with the port, so the controller
    never sees a port change type under it."""
    if port_type == "system":
        return ovs_switch

    class LabSwitch(ovs_switch):
        def intfOpts(self, intf) -> str:
            opts = super().intfOpts(intf)
            link = intf.link
            other = (link.intf2 if link.intf1 is intf else link.intf1) if link is not None else None
            if other is None or hasattr(other.node, "dpid"):  # no link, or a switch's port
                return opts
            return (opts or f" -- set Interface {intf}") + f" type={port_type} options:xdp-mode=native"

    return LabSwitch


def _pump_lines(stream, log: IO, on_line: Callable[[int, str], None]) -> None:
    for raw in iter(stream.readline, b""):
        ts = time.monotonic_ns()
        try:
            log.write(raw)
            log.flush()
        except ValueError:  # log closed during teardown
            pass
        on_line(ts, raw.decode(errors="replace").rstrip())
