"""``caslab up``: a live lab to poke at, on the very start-up path every run takes.

``caslab up [SPEC] [--mode M]`` builds the network of one scenario of a spec (its first
sweep point, in the chosen mode) with ``caslab.run.scenario.lab_up``, so every role, the
mode's load balancer, the probes and the clients start exactly as in a run. Then it
prints who is where (host, role, site, address, pids; the NLB admin API's URL and the
0600 file that holds its token)
and opens the Mininet CLI on the network (``cl1 ping outlook.hq.lab.test``: each host's
``/etc/resolv.conf`` is bind-mounted, inside that host's own mount namespace, to the lab's
DNS server). From a second shell ``caslab fault KIND TARGET``, ``caslab nlb ...`` and
``caslab down`` reach it through its control socket (``caslab.run.live_control``); every
command is recorded as a ``live_command`` event, each fault as the same ``fault`` event a
run logs. The spec's own ``[[faults]]`` are not injected: here the user is the timeline.

Leaving the CLI (``exit``, Ctrl-D, Ctrl-C at the prompt), SIGTERM, SIGHUP or ``caslab
down`` tear everything down by pid as a run does, and the folder becomes a result folder
like a run's (``caslab report DIR`` works on it). A SIGKILLed live lab is in the registry
(caslab/network/registry.py) like any run: ``caslab cleanup`` removes what it left.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import os
import signal
import sys
import threading
import time
import urllib.error
from pathlib import Path
from typing import Any

from caslab.base import interrupts, system

from caslab.network import nlb_client

from caslab.spec import plan_view, experiment as spec_mod

from caslab.run import runner, scenario as scenario_mod
from caslab.run.live_control import ControlServer
from caslab.modes import MODES
from caslab.network.netlab import LabError
from caslab.spec.scenario_check import check_fault_in
from caslab.schema.fields import SpecError
from labcommon.catalogue import LIVE_COMMAND
from labcommon.events import read_events
from topologies.plan import LAB_DOMAIN


class Terminated(BaseException):
    """SIGTERM or SIGHUP: leave the live lab. A BaseException, so that neither Mininet's
    CLI (which catches KeyboardInterrupt to interrupt a host's command) nor a handler of
    ordinary errors swallows it."""


class LiveError(ValueError):
    """A command the live lab refuses (its message says why)."""


def prepare(name: str | None, overrides: list[str], mode: str | None):
    """(spec, scenario, spec path, notes): the spec validated for one mode, without its
    faults; the scenario is its first sweep point."""
    raw, path = spec_mod.load_raw(name, overrides)
    raw = copy.deepcopy(raw)
    experiment = raw.setdefault("experiment", {})
    modes = experiment.get("modes") if isinstance(experiment, dict) else None
    if mode is None:
        mode = "sdn-nlb" if not isinstance(modes, list) or "sdn-nlb" in modes or not modes else str(modes[0])
    notes = []
    if raw.get("faults"):
        notes.append(f"the spec's {len(raw['faults'])} fault(s) are not injected: give them with caslab fault")
    if isinstance(experiment, dict):
        experiment["modes"] = [mode]
    raw["faults"] = []
    spec = spec_mod.validate(raw, str(path))
    scenarios = spec_mod.scenarios(spec)
    if len(scenarios) > 1:
        notes.append(f"the spec sweeps {len(scenarios)} points; the live lab is the first: {scenarios[0]['label']}")
    return spec, scenarios[0], path, notes


def describe(request: dict[str, Any]) -> str:
    """A request as the command a user would type (for the live_command event)."""
    op = str(request.get("op"))
    if op == "fault":
        params = request.get("params") if isinstance(request.get("params"), dict) else {}
        targets = request.get("target") if isinstance(request.get("target"), list) else []
        words = ["fault", str(request.get("kind")), ",".join(map(str, targets))]
        return " ".join(words + [f"--{k} {v}" for k, v in params.items()]).replace("  ", " ").strip()
    if op == "nlb":
        words = [request.get(k) for k in ("action", "vip", "value")]
        deadline = request.get("deadline")
        return " ".join(["nlb"] + [str(w) for w in words if w is not None]
                        + ([f"--deadline {deadline}"] if deadline is not None else []))
    return op


def catch_signals() -> None:
    """SIGTERM and SIGHUP raise Terminated, held back while the lab records a process it
    starts (caslab/base/interrupts.py), as every command's SIGTERM is."""
    interrupts.install(terminate=Terminated)


def mute_signals() -> None:
    """While tearing down, a second Ctrl-C or SIGTERM must not cut the teardown short."""
    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(signum, signal.SIG_IGN)


class LiveLab:
    """The lab side of ``caslab up``: the table, the control socket, the CLI."""

    def __init__(self, up: scenario_mod.LabUp, scenario: dict[str, Any], run_dir: Path):
        self.up, self.ctx, self.scenario, self.run_dir = up, up.ctx, scenario, run_dir
        self.lock = threading.Lock()
        self.faults = 0
        self.window = scenario_mod.Window(self.ctx)
        self.window_s = 0.0

    @property
    def has_api(self) -> bool:
        return self.up.mode.admin_api

    # ---- what the user sees -------------------------------------------------------------

    def pids(self, host: str) -> list[str]:
        shell = self.ctx.lab.node(host).pid
        return [" ".join([f"shell:{shell}"] + [f"{p.name}:{p.pid}" for p in self.ctx.lab.processes_on(host)
                                                 if p.alive()])]

    def table(self) -> str:
        lab, plan = self.ctx.lab, self.ctx.plan
        rows = plan_view.host_rows(plan, self.pids)
        rows += [["r1", "router", "-", "-"] + self.pids("r1")] if plan.routed else []
        ctl = self.ctx.controller
        rows.append(["(root)", "controller", "-", f"ssl:127.0.0.1:{self.up.of_port}",
                     f"{ctl.name}:{ctl.pid}" if ctl is not None and ctl.alive() else "-"])
        lines = [plan_view.table(["host", "role", "site", "address", "pids"], rows), ""]
        lines += plan_view.arrays_lines(self.scenario, plan)
        if self.has_api:
            lines.append(f"admin API: http://127.0.0.1:{self.ctx.nlb_api_port}/nlb  "
                         f"token file (0600): {self.ctx.nlb_token_file()}")
        lines.append(f"results:   {self.run_dir}   (written when the lab goes down; then: caslab report DIR)")
        lines.append(f"datapath:  {lab.datapath}; names resolve in every host (search {LAB_DOMAIN})")
        return "\n".join(lines)

    def banner(self) -> str:
        return "\n".join([
            "from another shell (root): caslab fault KIND TARGET [--key value] | caslab nlb show|drain|rejoin ... "
            "| caslab down",
            "here: <host> <command> (cl1 ping outlook.hq.lab.test), fault KIND TARGET, lab (this table), "
            "exit or Ctrl-D to tear down",
            "live lab ready"])

    # ---- commands ------------------------------------------------------------------------

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        """One command from the control socket or the CLI: carried out, recorded, answered."""
        with self.lock:
            op = request.get("op")
            command = describe(request)
            try:
                if op == "fault":
                    command, answer = self.fault(request)
                elif op == "nlb":
                    command, answer = self.nlb(request)
                elif op == "status":
                    return {"ok": True, "answer": self.table()}
                elif op == "stop":
                    answer = "tearing the live lab down"
                    threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGTERM)).start()
                else:
                    raise LiveError(f"unknown request {op!r}: fault, nlb, status or stop")
            except urllib.error.HTTPError as exc:
                return self.refused(command, f"NLB API {exc.code}: {exc.read().decode(errors='replace')}")
            except (LiveError, SpecError, nlb_client.UsageError) as exc:
                return self.refused(command, str(exc))
            except Exception as exc:  # noqa: BLE001 - a bad command must not take the lab down
                return self.refused(command, f"{type(exc).__name__}: {exc}")
            self.ctx.log.emit(LIVE_COMMAND, command=command, ok=True, answer=answer[:500])
            return {"ok": True, "answer": answer}

    def refused(self, command: str, why: str) -> dict[str, Any]:
        self.ctx.log.emit(LIVE_COMMAND, command=command, ok=False, answer=why[:500])
        return {"ok": False, "error": why}

    def fault(self, request: dict[str, Any]) -> tuple[str, str]:
        targets, params = request.get("target") or [], request.get("params") or {}
        if not isinstance(targets, list) or not isinstance(params, dict):
            raise LiveError("target must be a list and params a table")
        if "at_s" in params:
            raise LiveError("a live fault fires now: drop --at_s")
        raw = {"kind": request.get("kind"), **params, **({"target": targets} if targets else {})}
        index = self.faults
        try:
            spec = spec_mod.check_fault("caslab fault", index, raw)
            check_fault_in("caslab fault", self.scenario, self.ctx.plan, spec)
        except SpecError as exc:
            raise LiveError(str(exc).replace(f"faults[{index}].", "")) from None
        self.faults += 1
        fault = scenario_mod.inject_fault(self.ctx, spec)
        undo = f"; undone after {spec['duration_s']:g} s" if spec.get("duration_s") else ""
        return describe(request), f"injected {fault.label()} (fault {index}){undo}"

    def nlb(self, request: dict[str, Any]) -> tuple[str, str]:
        action, vip, value = request.get("action"), request.get("vip"), request.get("value")
        command = describe(request)
        if not self.has_api:
            raise LiveError(f"mode {self.up.mode.name} has no NLB admin API (only {', '.join(m for m, c in MODES.items() if c.admin_api)} has one; "
                            "drain a Windows NLB host with: caslab fault drain CAS)")
        plan = self.ctx.plan
        names = {h.name for h in plan.by_role("cas")}
        if action in nlb_client.MEMBER_ACTIONS and value is None and vip in names:
            vip, value = plan.site(plan.host(vip).site).vip, vip  # `caslab nlb drain cas1`: its site's VIP
        sites = {s.name: s.vip for s in plan.sites}
        vip = sites.get(vip, vip)
        path, body = nlb_client.request_for(str(action), vip, value, request.get("deadline"))
        result = nlb_client.call(self.ctx.nlb_api_port, path, body, self.ctx.nlb_api_token)
        return command, json.dumps(result, indent=2, sort_keys=True)

    # ---- the session -----------------------------------------------------------------------

    def point_resolvers(self) -> None:
        """Each host's /etc/resolv.conf -> the lab's DNS, bind-mounted inside the host's own
        mount namespace (Mininet gives each host one): the machine's file is untouched."""
        path = self.ctx.raw_dir / "config" / "resolv.conf"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"nameserver {self.ctx.dns_server}\nsearch {LAB_DOMAIN}\noptions timeout:1 attempts:2\n")
        failed = []
        for node in self.ctx.lab.net.hosts:
            code, out = self.ctx.lab.run_in(node.name, ["mount", "--bind", "--", str(path.absolute()),
                                                        "/etc/resolv.conf"])
            if code != 0:
                failed.append(f"{node.name}: {out.strip()[:80]}")
        if failed:
            print(f"note: lab names do not resolve in {', '.join(failed)}", file=sys.stderr)

    def serve(self, cli: bool) -> None:
        """Until the user leaves: control socket, table, CLI (or a wait); then close."""
        opened = time.monotonic()
        self.window.open(self.scenario["timing"]["observe_s"])
        server = None
        try:
            self.point_resolvers()
            server = ControlServer(self.ctx.lab.record.folder / "control.sock", self.handle)
            server.start()
            self.ctx.lab.record.update(live={"control": str(server.path), "mode": self.scenario["mode"],
                                             "label": self.scenario["label"]})
            print(self.table() + "\n\n" + self.banner(), flush=True)
            if cli:
                from caslab.run.live_cli import LiveCli

                LiveCli(self.ctx.lab.net, self)
            else:
                while True:
                    time.sleep(3600)
        except (KeyboardInterrupt, Terminated) as exc:
            print(f"\ncaslab: {type(exc).__name__} {exc}: tearing the live lab down", file=sys.stderr)
        finally:
            mute_signals()
            if server is not None:
                server.close()
            self.window.close()
            self.window_s = round(time.monotonic() - opened, 1)


def main_cli(args) -> int:
    """``caslab up``."""
    from caslab.network import doctor

    try:
        spec, scenario, path, notes = prepare(args.spec, args.set, args.mode)
    except SpecError as exc:
        print(f"caslab: bad spec: {exc}", file=sys.stderr)
        return 2
    failed = [c for c in doctor.checks() if c.required and not c.ok]
    for check in failed:
        print(f"caslab: cannot run: {check.name}: {check.detail}", file=sys.stderr)
    if failed:
        return 3
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = runner.result_folder(args.out, f"live-{scenario['mode']}-{stamp}")
    try:
        runner.prepare_folder(run_dir, args.force)
    except LabError as exc:
        print(f"caslab: {exc}", file=sys.stderr)
        return 2
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    return session(spec, scenario, path, run_dir, cli=not args.no_cli, clients=not args.no_clients)


def session(spec, scenario, path: Path, run_dir: Path, cli: bool, clients: bool) -> int:
    meta = runner.scenario_metas([scenario])[0]
    manifest = runner.new_manifest(run_dir, spec, path, [meta])
    manifest["live"] = True
    runner.write_manifest(run_dir, manifest)
    raw_dir = run_dir / "raw" / f"{meta['id']}-r1"
    progress = runner.Progress(1)
    progress.run(1, f"{scenario['label']} (live)", 0)
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    catch_signals()
    live, code = None, 1
    try:
        with scenario_mod.lab_up(scenario, 0, raw_dir, progress, clients=clients) as up:
            live = LiveLab(up, scenario, run_dir)
            live.serve(cli)
            up.finish()
        code = 0
    except (KeyboardInterrupt, Terminated) as exc:
        print(f"caslab: interrupted ({type(exc).__name__} {exc}) while starting; the lab was torn down",
              file=sys.stderr)
        code = 130
    except Exception as exc:  # noqa: BLE001 - one clear line, never a traceback
        print(f"caslab: live lab failed: {type(exc).__name__}: {exc} (the lab was torn down)", file=sys.stderr)
    finally:
        mute_signals()
        finish_folder(run_dir, manifest, meta, raw_dir, live, code == 0)
    print(f"results: {run_dir}\nreport:  {run_dir / 'report.html'}")
    return code


def finish_folder(run_dir: Path, manifest, meta, raw_dir: Path, live: LiveLab | None, ok: bool) -> None:
    """Make the folder a result folder like a run's: events merged, manifest final, report."""
    manifest["complete"] = ok
    if live is not None:
        manifest["spec"]["timing"]["observe_s"] = max(live.window_s, 1.0)  # the window the lab was live
    runner.write_manifest(run_dir, manifest)
    try:
        with open(run_dir / "events.jsonl", "w", encoding="utf-8") as out:
            if raw_dir.exists():
                scenario_mod.merge_raw(raw_dir, out, meta["id"], 0)
        if any(True for _ in read_events(run_dir / "events.jsonl")):
            from caslab.results import report
            from caslab.results.columns import terminal_table

            print("\n" + terminal_table(report.write_report(run_dir).rows))
    except Exception as exc:  # noqa: BLE001 - the raw events stay; `caslab report DIR` can retry
        print(f"caslab: could not write the report: {type(exc).__name__}: {exc}", file=sys.stderr)
    finally:
        system.give_to_invoking_user(str(run_dir))
        runner.refresh_index(run_dir)

