"""The program catalogue (labcommon/programs.py): one record per in-host program (and the
controller), and its configuration typed and checked on both sides.

The program side is run for real: each program is started as the lab starts it
(``python -m <module> CONFIG.json``; the controller: the launcher with the SDN NLB app,
its file named by ``CASLAB_NLB_CONFIG``) on a file with an unknown, a missing or a
mistyped key, and must stop at once naming the file and the key, before it binds or
sends anything. A configuration with every key set survives the file unchanged. No root
needed.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from labcommon import programs
from labcommon.programs import PROGRAMS, ConfigError, config_json, read_config

ROOT = Path(__file__).resolve().parent.parent
IN_HOST = [p for p in PROGRAMS.values() if p.config is not None]


def sample(kind: type) -> typing.Any:
    """A configuration of ``kind`` with every required field filled, recursively."""
    hints = typing.get_type_hints(kind)
    values = {}
    for f in dataclasses.fields(kind):
        if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING:
            continue
        values[f.name] = sample_value(hints[f.name])
    return kind(**values)


def sample_value(hint: typing.Any) -> typing.Any:
    if dataclasses.is_dataclass(hint):
        return sample(hint)
    origin = typing.get_origin(hint)
    if origin is list:
        return []
    if origin is dict:
        return {}
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        return None
    return {str: "x", int: 1, float: 1.0, bool: False}[hint]


def full(kind: type) -> typing.Any:
    """A configuration of ``kind`` with every field set, none to its default, recursively
    (a list or a dict holds one element): a key the file loses is seen."""
    hints = typing.get_type_hints(kind)
    return kind(**{f.name: full_value(hints[f.name], f.default) for f in dataclasses.fields(kind)})


def full_value(hint: typing.Any, default: typing.Any = None) -> typing.Any:
    if dataclasses.is_dataclass(hint):
        return full(hint)
    origin, args = typing.get_origin(hint), [a for a in typing.get_args(hint) if a is not type(None)]
    if origin is list:
        return [full_value(args[0])]
    if origin is dict:
        return {"k": full_value(args[1])}
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        return full_value(args[0])
    if hint is bool:
        return default is not True
    return {str: "set", int: 7, float: 2.5, typing.Any: "any"}[hint]


def test_every_in_host_program_is_declared_once_with_its_kind_and_module():
    assert len({p.module for p in IN_HOST if p.module != "roles.cas_http"}) == len(IN_HOST) - 1
    assert {p.key for p in IN_HOST} >= {"cas", "cas-http", "mailbox", "autodiscover", "client", "http-client",
                                         "prober", "app-prober", "health-agent", "wnlb-agent"}
    assert {p.key for p in PROGRAMS.values() if p.module is None} >= {"dnsmasq", "haproxy", "tcpdump"}
    with pytest.raises(ValueError, match="declared twice"):
        programs.program("cas", "cas", "roles.cas", None, None, 0)


def test_process_names_come_from_the_record():
    assert programs.HEALTH_AGENT.process_name("lb1") == "health-lb1"
    assert programs.HTTP_CLIENT.process_name("cl1") == "cl1-http"
    assert programs.CAS.process_name("cas1") == "cas1"
    assert programs.DNSMASQ.process_name("dns1") == "dnsmasq"


@pytest.mark.parametrize("record", IN_HOST, ids=lambda p: p.key)
def test_the_engine_side_refuses_what_the_program_would_refuse(record):
    config = sample(record.config)
    assert read_config_text(record, config_json(record, config)) == config  # a round trip keeps everything
    with pytest.raises(TypeError):
        record.config(**dataclasses.asdict(config), surplus=1)  # an unknown key, where it is written
    first = dataclasses.fields(record.config)[0]
    setattr(config, first.name, object())  # a value JSON cannot carry, or of the wrong type
    with pytest.raises((ConfigError, TypeError)):
        config_json(record, config)
    other = next(p for p in IN_HOST if p.config is not record.config)
    with pytest.raises(ConfigError, match="expected a"):
        config_json(record, sample(other.config))


@pytest.mark.parametrize("record", IN_HOST, ids=lambda p: p.key)
def test_a_round_trip_keeps_every_key(record):
    config = full(record.config)
    assert read_config_text(record, config_json(record, config)) == config


def read_config_text(record, text: str, tmp=Path("/tmp")):
    path = tmp / f"caslab-test-{record.key}.json"
    path.write_text(text)
    try:
        return read_config(record, path)
    finally:
        path.unlink()


def broken_files(record) -> dict[str, tuple[dict, str]]:
    """name -> (a configuration file's content, the key its error must name)."""
    good = json.loads(config_json(record, sample(record.config)))
    required = next(f.name for f in dataclasses.fields(record.config) if f.default is dataclasses.MISSING
                    and f.default_factory is dataclasses.MISSING)
    missing = {k: v for k, v in good.items() if k != required}
    wrong = dict(good, **{required: [1, 2]})
    return {"unknown": (dict(good, colour="blue"), "colour"), "missing": (missing, required),
            "mistyped": (wrong, required)}


@pytest.mark.parametrize("case", ["unknown", "missing", "mistyped"])
@pytest.mark.parametrize("record", IN_HOST, ids=lambda p: p.key)
def test_a_program_stops_on_a_configuration_its_record_does_not_allow(record, case, tmp_path):
    data, key = broken_files(record)[case]
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    argv, env = started_as(record, path)
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
                          env={**os.environ, **env})
    assert done.returncode != 0
    assert str(path) in done.stderr and key in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr, "a clear error, not a crash"


def started_as(record, path: Path) -> tuple[list[str], dict[str, str]]:
    """How the lab starts ``record`` on the configuration file ``path`` (argv, environment):
    an in-host program as ``python -m <module> CONFIG.json``; the controller as
    caslab/netlab.py's ``popen_controller`` starts the SDN NLB app, on a loopback port of
    its own instead of the run's inherited TLS socket."""
    if record is programs.CONTROLLER:
        return [sys.executable, "-m", record.module, "--port", "0", "controllers.sdn_nlb"], \
            {"CASLAB_NLB_CONFIG": str(path)}
    return [sys.executable, "-m", record.module, str(path)], {}


def attributes_read(paths: list[Path]) -> set[str]:
    names = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute):
                names.add(node.attr)
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr" \
                    and len(node.args) > 1 and isinstance(node.args[1], ast.Constant):
                names.add(node.args[1].value)
    return names


def fields_of(kind: type, prefix: str = "") -> list[str]:
    """Every field of a configuration, nested ones with their path."""
    out = []
    hints = typing.get_type_hints(kind)
    for f in dataclasses.fields(kind):
        out.append(prefix + f.name)
        inner = [a for a in (hints[f.name], *typing.get_args(hints[f.name])) if dataclasses.is_dataclass(a)]
        inner += [a for arg in typing.get_args(hints[f.name]) for a in typing.get_args(arg)
                  if dataclasses.is_dataclass(a)]
        for kind_inside in inner:
            out += fields_of(kind_inside, f"{prefix}{f.name}.")
    return out


@pytest.mark.parametrize("record", IN_HOST, ids=lambda p: p.key)
def test_every_key_a_record_declares_is_read_by_its_program(record):
    """No key is written that nobody reads: each field is read somewhere in the program's
    package or the common runtime (as ``.field`` or ``getattr(x, "field")``)."""
    package = ROOT / record.module.split(".")[0]
    read = attributes_read(sorted(package.glob("*.py")) + [ROOT / "labcommon" / "runtime.py"])
    unread = [name for name in fields_of(record.config) if name.rsplit(".", 1)[-1] not in read]
    assert not unread, f"{record.key}: keys no program reads: {unread}"


def test_the_start_up_keeps_the_records_order_and_refuses_another(tmp_path):
    """Every run starts its programs through LabNetwork in the catalogue's order (a real
    run's start-up is checked on every run); one that starts out of order is refused
    before it starts. After the start-up (faults, restarts) any order goes."""
    from caslab.base.waits import LabError
    from caslab.network.netlab import LabNetwork
    from topologies.plan import LabPlan

    ordered = sorted(PROGRAMS.values(), key=lambda r: r.order)
    assert [r.key for r in ordered][:3] == ["controller", "wnlb-agent", "dnsmasq"]
    assert programs.CLIENT.order > programs.PROBER.order > programs.HEALTH_AGENT.order > programs.CAS.order
    lab = LabNetwork(LabPlan.build([{"name": "HQ", "cas": 1, "mailboxes": 1, "clients": 1}]), tmp_path,
                     datapath="user")
    sleeper = [sys.executable, "-c", "import time; time.sleep(30)"]
    try:
        lab.popen_root("cas1", sleeper, program=programs.CAS)
        with pytest.raises(LabError, match=r"start-up out of order: mbx1 \(mailbox, order 3\) started after a "
                                           r"program of order 4"):
            lab.popen_root("mbx1", sleeper, program=programs.MAILBOX)
        assert [p.name for p in lab.processes] == ["cas1"]
        lab.popen_root("cl1", sleeper, program=programs.CLIENT)
        lab.started_up()
        lab.popen_root("mbx1", sleeper, program=programs.MAILBOX)  # a restart after the start-up
        assert [p.name for p in lab.processes] == ["cas1", "cl1", "mbx1"]
    finally:
        for proc in lab.processes:
            proc.stop()


def test_a_client_sessions_readiness_comes_from_its_record():
    """The run waits for every session it started to say it is ready, in the words its
    program's record gives (an HTTP session also when autodiscover was unreachable)."""
    from caslab.base.waits import session_ready
    from labcommon.catalogue import HTTP_AUTODISCOVER, HTTP_REQUEST, OP, SERVICE_UP

    ready = session_ready([programs.CLIENT, programs.HTTP_CLIENT])
    assert ready("cl1", {"ev": OP, "ok": True, "session": "cl1-s0"}) == "cl1-s0"
    assert ready("cl1", {"ev": OP, "ok": False, "session": "cl1-s0"}) is None
    assert ready("cl1-http", {"ev": HTTP_REQUEST, "ok": True, "session": "h-owa0"}) == "h-owa0"
    assert ready("cl1-http", {"ev": HTTP_AUTODISCOVER, "ok": False, "session": "h-owa0"}) == "h-owa0"
    assert ready("cl1-http", {"ev": HTTP_AUTODISCOVER, "ok": True, "session": "h-owa0"}) is None
    assert ready("cas1", {"ev": SERVICE_UP, "session": "x"}) is None
    assert session_ready([programs.CLIENT])("cl1-http", {"ev": HTTP_REQUEST, "ok": True, "session": "h"}) is None
    sessions = [r.key for r in PROGRAMS.values() if r.session_ready]
    assert sessions == ["client", "http-client"]


class StubLab:
    """What the sdn-nlb mode asks of the live network to write the controller's file."""
    datapath_name = "netdev@ovs-netdev"

    @staticmethod
    def switch_port_name(host: str) -> str:
        return f"sw-{host}"

    @staticmethod
    def router_port(site_index: int) -> tuple[str, str]:
        return f"sw-r1-{site_index}", f"02:00:00:00:01:{site_index:02x}"


def test_the_sdn_nlb_mode_writes_a_file_the_controller_reads_whole(tmp_path):
    """The engine's side of the controller's file: the sdn-nlb mode builds an NlbConfig (two
    routed sites: the router is a source of each VIP), ``config_json`` writes it, and the
    app's own reader gets every value back."""
    from types import SimpleNamespace

    from caslab.spec import experiment as spec_mod
    from caslab.modes.sdn_nlb import SdnNlb
    from controllers.nlb_core import NlbCore
    from controllers.sdn_nlb import read_nlb_config
    from topologies.plan import plan_from_topology

    raw = {"experiment": {"name": "t", "modes": ["sdn-nlb"]}, "topology": {"branch": True},
           "nlb": {"packet_in_rate": 800, "dataplane": "controller"}}
    [scenario] = spec_mod.scenarios(spec_mod.validate(raw, "t"))
    ctx = SimpleNamespace(spec=scenario, plan=plan_from_topology(scenario["topology"]), lab=StubLab(),
                          raw_dir=tmp_path, socket_dir=lambda: tmp_path, events_path=lambda s: f"{tmp_path}/{s}.jsonl",
                          nlb_api_port=4242, nlb_api_socket=SimpleNamespace(fileno=lambda: 9),
                          nlb_token_file=lambda: tmp_path / "nlb-token")
    config = SdnNlb().controller_config(ctx)
    path = tmp_path / "controller.json"
    path.write_text(config_json(programs.CONTROLLER, config))
    assert read_nlb_config(str(path)) == config
    assert [(v.name, v.dpid, len(v.members)) for v in config.vips] == [("HQ", 1, 3), ("Branch", 2, 2)]
    assert config.vips[0].sources[-1].prefixes == [str(ctx.plan.sites[1].subnet)]  # the Branch, via the router
    assert (config.meter.rate_pps, config.meter.burst, config.api.fd, config.dataplane) == (800, 200, 9, "controller")
    assert len(NlbCore(config).vips) == 2
