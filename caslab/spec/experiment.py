"""Experiment specs: TOML files in ``experiments/``, validated before anything starts.

A spec is checked as a whole before any network is built: an unknown key, a wrong type,
an impossible value or a name the addressing plan does not have is a ``SpecError`` naming
the file, the key and what was expected. ``--set key=value`` overrides go through the same
checks, and so does every scenario a sweep expands to. The core sections are declared in
``CORE``; each HA mode declares its own section (``caslab.modes``) and each fault its own
keys (``caslab.faults``). The fully resolved spec (defaults filled in) is what the runner
uses and what each manifest keeps.
"""

from __future__ import annotations

import copy
import difflib
import itertools
from pathlib import Path
from typing import Any

from caslab import SOURCE_ROOT
from caslab.faults import FAULTS
from caslab.schema.http import HTTP_FIELDS
from caslab.modes import MODES
from caslab.schema.fields import (
    NUM, Field, SpecError, choice, int_range, list_of, non_negative, num_range, one_of, pattern,
)
from caslab.spec.scenario_check import check_scenario
from caslab.schema.exchange import check_arrays, unknown_key as _unknown
from topologies.plan import MAX_CAS, MAX_CLIENTS, MAX_HYPERVISORS, MAX_MAILBOXES

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

EXPERIMENTS_DIR = SOURCE_ROOT / "experiments"
MAX_SCENARIOS = 200
OPS = ("read", "send", "sync", "ping")
__all__ = ["SpecError", "validate", "load", "scenarios", "tomllib", "SCHEMA"]

CORE: dict[str, dict[str, Field]] = {
    "experiment": {
        "name": pattern("experiment", r"[A-Za-z0-9_.-]{1,64}", "a name of letters, digits, '_', '.', '-'"),
        "description": Field(str, ""),
        "repetitions": int_range(1, 1, 50),
        "order": choice("scenarios", ("scenarios", "interleaved"),
                        "scenarios: every repetition of one scenario, then the next; interleaved: repetition 1 "
                        "of every scenario, then repetition 2, ...: scenarios compared side by side share the "
                        "machine's drift (other load, warm caches) instead of one getting the quiet minutes"),
        "seed": Field(int, 1, lambda v: 0 <= v < 2**31, "an integer from 0 to 2147483647"),
        "modes": Field(list, ["sdn-nlb"], lambda v: bool(v) and len(set(v)) == len(v)
                       and list_of(str, lambda m: m in MODES)(v),
                       f"a non-empty list of distinct modes from {sorted(MODES)}", options=tuple(MODES)),
    },
    "topology": {
        "cas": int_range(3, 1, MAX_CAS),
        "mailboxes": int_range(2, 1, MAX_MAILBOXES),
        "client_hosts": int_range(2, 1, MAX_CLIENTS),
        "branch": Field(bool, False),
        "branch_cas": int_range(2, 0, MAX_CAS),
        "branch_client_hosts": int_range(1, 0, MAX_CLIENTS),
        "internet_client_hosts": int_range(0, 0, MAX_CLIENTS, "hosts in an 'Internet' site (no AD): HTTP "
                                                              "clients that find their server through DNS"),
        "databases": int_range(2, 1, 16),
        "multi_role": Field(bool, False, doc="the first min(cas, mailboxes) HQ servers run CAS and mailbox roles "
                                             "together (named ex1, ex2, ...)"),
        "branch_mailboxes": int_range(0, 0, MAX_MAILBOXES, "mailbox servers in Branch (for exchange.database_site)"),
        "wan_firewall": Field(bool, False, doc="the WAN router drops a CAS's connections to the mailbox servers of "
                                               "another site: no CAS can serve a database across the WAN"),
        "wan_bw_mbit": num_range(0, 0, 10000, "Mbit/s", "0: unlimited"),
        "wan_delay_ms": num_range(0, 0, 5000, "ms", "needs sch_netem; skipped with a notice without it"),
        "hypervisors": int_range(0, 0, MAX_HYPERVISORS, "HQ's CAS run as VMs on this many hypervisor switches joined "
                                                        "by the site switch; 0: every host on the site switch"),
        "vm_placement": Field(dict, {}, lambda v: all(isinstance(x, str) for x in v.values()),
                              "a table of CAS = hypervisor, e.g. { cas1 = \"hv1\", cas2 = \"hv1\" }",
                              "where each VM starts (unnamed CAS: hv1, hv2, ... in turn)"),
        "switch_ports": choice("system", ("system", "afxdp"),
                               "the Open vSwitch ports of the hosts: system (AF_PACKET sockets) or afxdp (AF_XDP "
                               "sockets in native XDP mode, afxdp-nonpmd: no buffers allocated per poll, no "
                               "busy-polling core; userspace datapath only, about 70 MB of memory per port; where "
                               "Open vSwitch or the kernel lacks it, system ports with a notice)"),
        "backend_network": Field(bool, False, doc="the CAS and mailbox servers get a second NIC on a Linux "
                                                  "bridge (10.101.0.0/16): CAS-to-mailbox and replication traffic "
                                                  "stay off the load balancer's switch (one site, no hypervisors)"),
        "notify_switches": Field(bool, True, doc="hypervisors send a RARP for each VM's MAC when it starts or moves "
                                                 "(VMware 'Notify Switches', default Yes)"),
    },
    "clients": {
        "sessions_per_host": int_range(8, 0, 500, "Outlook (RPC) sessions per internal client host"),
        "interval_ms": int_range(50, 5, 60000),
        "op_timeout_ms": int_range(1000, 10, 600000),
        "connect_timeout_ms": int_range(1000, 10, 600000),
        "backoff_ms": Field(list, [0, 100, 250, 500, 1000, 2000],
                            lambda v: 0 < len(v) <= 32 and list_of(int, lambda x: 0 <= x <= 600000)(v),
                            "a non-empty list of at most 32 delays in ms from 0 to 600000"),
        "select": choice("next_on_fail", ("first", "next_on_fail")),
        "distinct_source_ips": Field(bool, False),
        "prompt_answer_ms": int_range(0, 0, 600000, "how long a user takes to type credentials at a prompt "
                                                    "(exchange.auth = ntlm); 0: answered at once"),
        "ops": Field(dict, {"read": 4, "send": 2, "sync": 1, "ping": 3},
                     lambda v: bool(v) and all(k in OPS and isinstance(w, int) and not isinstance(w, bool)
                                               and 0 <= w <= 1000 for k, w in v.items()) and sum(v.values()) > 0,
                     "a table of weights for read/send/sync/ping (integers from 0 to 1000, not all zero)"),
    },
    "timing": {
        "warmup_s": num_range(2.0, 0.5, 600, "s"),
        "observe_s": num_range(8.0, 1, 3600, "s"),
        "ready_timeout_s": num_range(20.0, 1, 300, "s"),
        "all_ready": Field(bool, True, doc="every session must complete an operation before warm-up; false: go on "
                                           "after ready_timeout_s (a misconfiguration that cuts users off from "
                                           "the start is then measured, not an error)"),
    },
    "dns": {
        "ttl_s": Field(int, 300, lambda v: 0 <= v <= 2_147_483_647, "a TTL in seconds from 0 to 2147483647"),
    },
    "exchange": {
        "rpc_client_access_server": Field(
            dict, {}, lambda v: all(isinstance(x, str) for x in v.values()),
            "a table of database = server, e.g. { DB1 = \"cas2\" } or { DB1 = \"array:HQ\" }"),
        "created_before_array": Field(list, [], list_of(str), "a list of database names like [\"DB1\"]"),
        "database_site": Field(dict, {}, lambda v: all(isinstance(x, str) for x in v.values()),
                               "a table of database = site, e.g. { DB2 = \"Branch\" } (default: HQ)"),
        "autodiscover_refresh_s": num_range(3600, 1, 86400, "s", "Outlook: one hour"),
        "replication": choice("sync", ("sync", "async"), "DAG replication: sync acknowledges a send once every "
                                                        "healthy copy has it; async ships log generations"),
        "log_messages": int_range(10, 1, 10000, "messages per log generation"),
        "log_interval_ms": int_range(500, 10, 600000, "async: a log generation is shipped at least this often"),
        "mount_dial": choice("best", ("lossless", "good", "best"), "AutoDatabaseMountDial: a copy lacking more "
                                                                     "than 0 / 6 / 12 log generations stays dismounted"),
        "dumpster_messages": int_range(0, 0, 5000, "transport dumpster: recent messages kept per database by each "
                                                   "hub transport (the lab's CAS), resubmitted after a failover "
                                                   "mounts a copy; 0: off"),
        "auth": choice("ntlm", ("ntlm", "kerberos"), "how Outlook authenticates: with ntlm a session that lands on "
                                                    "another CAS prompts for credentials; with kerberos (2010 SP1, "
                                                    "alternate service account) it re-authenticates silently"),
    },
    "probe": {
        "rate_hz": num_range(20, 0, 100, "probes per second", "SYN probes; 0: off"),
        "app_rate_hz": num_range(5, 0, 50, "probes per second", "application probes through the array name; 0: off"),
        "capture": Field(bool, True),
    },
    "http": HTTP_FIELDS,
    "metrics": {
        "late_ms": int_range(500, 1, 600000),
        "stall_ms": int_range(0, 0, 3600000, "0: clients.interval_ms + clients.op_timeout_ms"),
        "min_cpu_idle_pct": num_range(35, 0, 100, "%"),
    },
}


def schema() -> dict[str, dict[str, Field]]:
    """Core sections plus each mode's own section, from the mode registry."""
    out = dict(CORE)
    for mode in MODES.values():
        if mode.section and mode.section not in out:
            out[mode.section] = dict(mode.settings)
    return out


SCHEMA = schema()
FAULT_COMMON: dict[str, Field] = {
    "kind": Field(str, None, one_of(tuple(FAULTS)), f"one of {sorted(FAULTS)}", options=tuple(FAULTS)),
    "target": Field((str, list), None, None, "a host name like 'cas1' or a list of them ('@busiest': the CAS "
                                             "serving the most sessions when the fault fires)"),
    "at_s": Field(NUM, 0.0, non_negative, "a non-negative number of seconds after warm-up"),
}


def validate(raw: dict[str, Any], source: str) -> dict[str, Any]:
    """Check a parsed spec and return it with every default filled in."""
    if not isinstance(raw, dict):
        raise SpecError(source, "(top level)", "a TOML document")
    allowed = set(SCHEMA) | {"faults", "sweep", "arrays"}
    for section in raw:
        if section not in allowed:
            raise _unknown(source, section, allowed)
    spec: dict[str, Any] = {}
    for section, fields in SCHEMA.items():
        given = raw.get(section, {})
        if not isinstance(given, dict):
            raise SpecError(source, section, "a table", given)
        for key in given:
            if key not in fields:
                raise _unknown(source, f"{section}.{key}", fields)
        spec[section] = {key: field.validate(source, f"{section}.{key}", given.get(key, copy.deepcopy(field.default)))
                         for key, field in fields.items()}
    faults = raw.get("faults", [])
    if not isinstance(faults, list):
        raise SpecError(source, "faults", "an array of tables ([[faults]])", faults)
    spec["faults"] = [check_fault(source, i, f) for i, f in enumerate(faults)]
    spec["sweep"] = _check_sweep(source, raw.get("sweep", {}))
    spec["arrays"] = check_arrays(source, raw.get("arrays"))
    for scenario in scenarios(spec):
        where = source if not scenario["params"] else f"{source} (sweep point {scenario['label']})"
        check_scenario(where, scenario)
    return spec


def check_fault(source: str, index: int, raw: Any) -> dict[str, Any]:
    prefix = f"faults[{index}]"
    if not isinstance(raw, dict):
        raise SpecError(source, prefix, "a table with kind, target, at_s", raw)
    if "kind" not in raw:
        raise SpecError(source, f"{prefix}.kind", f"one of {sorted(FAULTS)} (missing)")
    kind = FAULT_COMMON["kind"].validate(source, f"{prefix}.kind", raw["kind"])
    cls = FAULTS[kind]
    fields = {**FAULT_COMMON, **cls.fields}
    for key in raw:
        if key not in fields:
            raise _unknown(source, f"{prefix}.{key}", fields)
    fault: dict[str, Any] = {"index": index}
    for key, field in fields.items():
        value = raw.get(key, copy.deepcopy(field.default))
        if value is not None:
            fault[key] = field.validate(source, f"{prefix}.{key}", value)
    targets = fault.get("target", [])
    targets = [targets] if isinstance(targets, str) else targets
    if cls.target_roles and not targets:
        raise SpecError(source, f"{prefix}.target", "a host name like 'cas1' or a list of them (missing)")
    if not cls.target_roles and targets:
        raise SpecError(source, f"{prefix}.target", f"no target: {kind} acts on the lab as a whole", targets)
    if len(set(map(str, targets))) != len(targets):
        raise SpecError(source, f"{prefix}.target", "distinct host names", targets)
    fault["target"] = list(targets)
    return fault


def _check_sweep(source: str, sweep: Any) -> dict[str, list]:
    if not isinstance(sweep, dict):
        raise SpecError(source, "sweep", "a table of dotted keys to lists of values", sweep)
    out = {}
    for key, values in sweep.items():
        if not isinstance(values, list) or not values:
            raise SpecError(source, f"sweep.{key}", "a non-empty list of values", values)
        section, _, name = key.partition(".")
        if section not in SCHEMA or name not in SCHEMA[section]:
            raise SpecError(source, f"sweep.{key}", "a dotted key like 'nlb.fast_fail' naming a spec setting")
        out[key] = [SCHEMA[section][name].validate(source, f"sweep.{key}", v) for v in values]
    count = 1
    for values in out.values():
        count *= len(values)
        if count > MAX_SCENARIOS:
            raise SpecError(source, "sweep", f"at most {MAX_SCENARIOS} combinations per mode", f"{count}+")
    return out




# ---------------------------------------------------------------- files, overrides, scenarios

def parse_override(text: str) -> tuple[str, Any]:
    """'section.key=value' with a TOML value; a bare word is taken as a string."""
    if "=" not in text:
        raise SpecError("--set", text, "section.key=value")
    key, _, value = text.partition("=")
    key = key.strip()
    if key.count(".") != 1:
        raise SpecError("--set", key, "a dotted key like 'nlb.fast_fail'")
    try:
        parsed = tomllib.loads(f"v = {value.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value.strip()
    return key, parsed


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    raw = copy.deepcopy(raw)
    for text in overrides:
        key, value = parse_override(text)
        section, name = key.split(".")
        if section not in SCHEMA:
            raise _unknown("--set", section, SCHEMA)
        raw.setdefault(section, {})
        if not isinstance(raw[section], dict):
            raise SpecError("--set", key, "a table section")
        raw[section][name] = value
    return raw


def spec_names() -> list[str]:
    return sorted(p.stem for p in EXPERIMENTS_DIR.glob("*.toml"))


def resolve_path(name: str | None) -> Path:
    """A spec path, or a bare name looked up in experiments/ ('default' if None)."""
    if name is None:
        return EXPERIMENTS_DIR / "default.toml"
    path = Path(name)
    if path.is_file():
        return path
    candidate = EXPERIMENTS_DIR / (name if name.endswith(".toml") else f"{name}.toml")
    if candidate.is_file():
        return candidate
    close = difflib.get_close_matches(Path(name).stem, spec_names(), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise SpecError(str(path), "(file)", f"an existing TOML file or the name of one in experiments/{hint}")


def load_raw(name: str | None, overrides: list[str] | None = None) -> tuple[dict[str, Any], Path]:
    """The spec as written (overrides applied), not yet validated."""
    path = resolve_path(name)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(str(path), "(syntax)", f"valid TOML ({exc})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(str(path), "(file)", f"a readable UTF-8 file ({exc})") from None
    return apply_overrides(raw, overrides or []), path


def load(name: str | None, overrides: list[str] | None = None) -> tuple[dict[str, Any], Path]:
    raw, path = load_raw(name, overrides)
    return validate(raw, str(path)), path


def describe(path: Path) -> str:
    """A spec file's experiment.description (empty if it has none or does not parse)."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return ""
    description = raw.get("experiment", {}).get("description", "") if isinstance(raw.get("experiment"), dict) else ""
    return description if isinstance(description, str) else ""


def mode_sections() -> set[str]:
    return {m.section for m in MODES.values() if m.section}


def scenarios(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Expand modes x sweep points into scenarios, each a resolved spec of its own. A
    sweep over a mode's own section (``nlb.dataplane``) multiplies only that mode's
    scenarios: the other modes have nothing to vary there."""
    owned = mode_sections()
    out = []
    for mode in spec["experiment"]["modes"]:
        own = MODES[mode].section
        sweep_keys = sorted(k for k in spec["sweep"] if k.split(".")[0] not in owned or k.split(".")[0] == own)
        points = list(itertools.product(*(spec["sweep"][k] for k in sweep_keys))) or [()]
        for point in points:
            scenario = copy.deepcopy(spec)
            scenario["mode"] = mode
            scenario["params"] = dict(zip(sweep_keys, point))
            for key, value in scenario["params"].items():
                section, name = key.split(".")
                scenario[section][name] = value
            scenario["label"] = sweep_label(mode, scenario["params"])
            out.append(scenario)
    return out


# Sweep keys whose values are tables or lists, by the name an Exchange admin knows them by.
PARAM_NAMES = {"exchange.rpc_client_access_server": "RpcClientAccessServer",
               "exchange.database_site": "database site", "exchange.created_before_array": "created before the array",
               "topology.vm_placement": "VM placement", "clients.ops": "operation mix",
               "clients.backoff_ms": "back-off ms"}


def sweep_label(mode: str, params: dict[str, Any]) -> str:
    """A scenario's label as a person reads it: the mode, then each sweep value. A scalar
    reads ``key=value`` as in the spec (``nlb.dataplane=switch``, ``nlb.fast_fail=false``);
    a table reads ``RpcClientAccessServer: DB1 -> array:Branch``, empty ``...: default``;
    a list ``back-off ms: 0, 100``; several sweep keys are separated by ``;``."""
    return " ".join([mode] + ["; ".join(_show_param(key, value) for key, value in params.items())]).strip()


def _show_param(key: str, value: Any) -> str:
    if isinstance(value, (dict, list)):
        name = PARAM_NAMES.get(key, key.split(".")[-1].replace("_", " "))
        items = [f"{k} -> {_show(v)}" for k, v in value.items()] if isinstance(value, dict) else map(_show, value)
        return f"{name}: {', '.join(items) or 'default'}"
    return f"{key}={_show(value)}"


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return f"{value:g}" if isinstance(value, float) else str(value)
