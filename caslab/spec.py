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
import re
from pathlib import Path
from typing import Any

from caslab.faults import BUSIEST, FAULTS
from caslab.http_spec import HTTP_FIELDS, check_http
from caslab.modes import MODES
from caslab.schema import (
    NUM, Field, SpecError, choice, int_range, list_of, non_negative, num_range, one_of, pattern,
)
from topologies.plan import LAB_DOMAIN, MAX_CAS, MAX_CLIENTS, MAX_MAILBOXES, LabPlan, plan_from_topology

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

EXPERIMENTS_DIR = Path(__file__).resolve().parent.parent / "experiments"
MAX_SCENARIOS = 200
OPS = ("read", "send", "sync", "ping")
__all__ = ["SpecError", "validate", "load", "scenarios", "tomllib", "SCHEMA"]

CORE: dict[str, dict[str, Field]] = {
    "experiment": {
        "name": pattern("experiment", r"[A-Za-z0-9_.-]{1,64}", "a name of letters, digits, '_', '.', '-'"),
        "description": Field(str, ""),
        "repetitions": int_range(1, 1, 50),
        "seed": Field(int, 1, lambda v: 0 <= v < 2**31, "an integer from 0 to 2147483647"),
        "modes": Field(list, ["sdn-nlb"], lambda v: bool(v) and len(set(v)) == len(v)
                       and list_of(str, lambda m: m in MODES)(v),
                       f"a non-empty list of distinct modes from {sorted(MODES)}"),
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
        "wan_bw_mbit": num_range(0, 0, 10000, "Mbit/s", "0: unlimited"),
        "wan_delay_ms": num_range(0, 0, 5000, "ms", "needs sch_netem; skipped with a notice without it"),
    },
    "clients": {
        "sessions_per_host": int_range(8, 0, 500, "Outlook (RPC) sessions per internal client host"),
        "interval_ms": int_range(50, 5, 60000),
        "op_timeout_ms": int_range(1000, 10, 600000),
        "connect_timeout_ms": int_range(1000, 10, 600000),
        "backoff_ms": Field(list, [0, 100, 250, 500, 1000, 2000],
                            lambda v: 0 < len(v) <= 32 and list_of(int, lambda x: 0 <= x <= 600000)(v),
                            "a non-empty list of at most 32 delays in ms from 0 to 600000"),
        "select": Field(str, "next_on_fail", one_of(("first", "next_on_fail")), "'first' or 'next_on_fail'"),
        "distinct_source_ips": Field(bool, False),
        "ops": Field(dict, {"read": 4, "send": 2, "sync": 1, "ping": 3},
                     lambda v: bool(v) and all(k in OPS and isinstance(w, int) and not isinstance(w, bool)
                                               and 0 <= w <= 1000 for k, w in v.items()) and sum(v.values()) > 0,
                     "a table of weights for read/send/sync/ping (integers from 0 to 1000, not all zero)"),
    },
    "timing": {
        "warmup_s": num_range(2.0, 0.5, 600, "s"),
        "observe_s": num_range(8.0, 1, 3600, "s"),
        "ready_timeout_s": num_range(20.0, 1, 300, "s"),
    },
    "dns": {
        "ttl_s": Field(int, 300, lambda v: 0 <= v <= 2_147_483_647, "a TTL in seconds from 0 to 2147483647"),
    },
    "exchange": {
        "rpc_client_access_server": Field(
            dict, {}, lambda v: all(isinstance(x, str) for x in v.values()),
            "a table of database = server, e.g. { DB1 = \"cas2\" } or { DB1 = \"array:HQ\" }"),
        "created_before_array": Field(list, [], list_of(str), "a list of database names like [\"DB1\"]"),
        "autodiscover_refresh_s": num_range(3600, 1, 86400, "s", "Outlook: one hour"),
        "replication": choice("sync", ("sync", "async"), "DAG replication: sync acknowledges a send once every "
                                                        "healthy copy has it; async ships log generations"),
        "log_messages": int_range(10, 1, 10000, "messages per log generation"),
        "log_interval_ms": int_range(500, 10, 600000, "async: a log generation is shipped at least this often"),
        "mount_dial": choice("best", ("lossless", "good", "best"), "AutoDatabaseMountDial: a copy lacking more "
                                                                     "than 0 / 6 / 12 log generations stays dismounted"),
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
    "kind": Field(str, None, one_of(tuple(FAULTS)), f"one of {sorted(FAULTS)}"),
    "target": Field((str, list), None, None, "a host name like 'cas1' or a list of them ('@busiest': the CAS "
                                             "serving the most sessions when the fault fires)"),
    "at_s": Field(NUM, 0.0, non_negative, "a non-negative number of seconds after warm-up"),
}
ARRAY_FIELDS = {"name": re.compile(r"[A-Za-z0-9 _.-]{1,64}"), "fqdn": re.compile(r"[a-z0-9-]{1,63}(\.[a-z0-9-]{1,63})+"),
                "site": re.compile(r"HQ|Branch")}


def _unknown(source: str, key: str, known) -> SpecError:
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], sorted(known), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return SpecError(source, key, f"one of the keys {sorted(known)}{hint}")


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
    spec["faults"] = [_check_fault(source, i, f) for i, f in enumerate(faults)]
    spec["sweep"] = _check_sweep(source, raw.get("sweep", {}))
    spec["arrays"] = _check_arrays(source, raw.get("arrays"))
    for scenario in scenarios(spec):
        where = source if not scenario["params"] else f"{source} (sweep point {scenario['label']})"
        check_scenario(where, scenario)
    return spec


def _check_fault(source: str, index: int, raw: Any) -> dict[str, Any]:
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


def _check_arrays(source: str, arrays: Any) -> list[dict[str, str]] | None:
    """[[arrays]] as New-ClientAccessArray -Name -Fqdn -Site; None = one per site (default)."""
    if arrays is None:
        return None
    if not isinstance(arrays, list):
        raise SpecError(source, "arrays", "an array of tables ([[arrays]]) with name, fqdn, site", arrays)
    seen: dict[str, set] = {"fqdn": set(), "site": set()}
    out = []
    for i, entry in enumerate(arrays):
        if not isinstance(entry, dict):
            raise SpecError(source, f"arrays[{i}]", "a table with name, fqdn, site", entry)
        for key in entry:
            if key not in ARRAY_FIELDS:
                raise _unknown(source, f"arrays[{i}].{key}", ARRAY_FIELDS)
        for key, regex in ARRAY_FIELDS.items():
            value = entry.get(key)
            if not isinstance(value, str) or not regex.fullmatch(value):
                expected = {"name": "an array name", "fqdn": "a lower-case DNS name like 'outlook.hq.lab.test'",
                            "site": "'HQ' or 'Branch'"}[key]
                raise SpecError(source, f"arrays[{i}].{key}", expected + (" (missing)" if value is None else ""),
                                value)
        for key in ("fqdn", "site"):
            if entry[key] in seen[key]:
                raise SpecError(source, f"arrays[{i}].{key}", f"a {key} no other array has (one array per site)",
                                entry[key])
            seen[key].add(entry[key])
        out.append(dict(entry))
    return out


# ---------------------------------------------------------------- one scenario against its plan

def array_sites(scenario: dict[str, Any], plan: LabPlan) -> list[str]:
    if scenario["arrays"] is None:
        return [s.name for s in plan.sites if plan.by_role("cas", s.name)]
    return [a["site"] for a in scenario["arrays"]]


def server_names(scenario: dict[str, Any], plan: LabPlan) -> list[str]:
    """What a database's RpcClientAccessServer may name: an array, a CAS or its FQDN."""
    names = [f"array:{s}" for s in array_sites(scenario, plan)]
    names += [a["fqdn"] for a in scenario["arrays"] or []]
    if scenario["arrays"] is None:
        names += [s.array_fqdn for s in plan.sites if plan.by_role("cas", s.name)]
    for cas in plan.by_role("cas"):
        names += [cas.name, f"{cas.name}.{LAB_DOMAIN}"]
    return names


def check_scenario(source: str, scenario: dict[str, Any]) -> None:
    """Consistency of one resolved scenario (a sweep point) with its addressing plan."""
    topo = scenario["topology"]
    for key in ("wan_bw_mbit", "wan_delay_ms"):
        if topo[key] and not topo["branch"]:
            raise SpecError(source, f"topology.{key}", "0 without a Branch site (topology.branch = true): "
                                                       "there is no WAN link to shape", topo[key])
    try:
        plan = plan_from_topology(topo)
    except ValueError as exc:
        raise SpecError(source, "topology", str(exc)) from None
    hosts = {h.name: h for h in plan.hosts}
    window_ms = scenario["timing"]["observe_s"] * 1000
    clients = scenario["clients"]
    for key in ("op_timeout_ms", "connect_timeout_ms"):
        if clients[key] >= window_ms:
            raise SpecError(source, f"clients.{key}", f"less than the observation window "
                                                      f"(timing.observe_s = {scenario['timing']['observe_s']:g} s)",
                            clients[key])
    if clients["distinct_source_ips"] and clients["sessions_per_host"] > 250:
        raise SpecError(source, "clients.sessions_per_host", "at most 250 with clients.distinct_source_ips "
                                                            "(one address per session)", clients["sessions_per_host"])
    _check_exchange(source, scenario, plan, hosts)
    mode = MODES[scenario["mode"]]
    check_http(source, scenario, mode.capabilities, mode.name, set(hosts))
    for fault in scenario["faults"]:
        key = f"faults[{fault['index']}]"
        cls = FAULTS[fault["kind"]]
        for target in fault["target"]:
            if target == BUSIEST and "cas" in cls.target_roles:
                continue  # chosen at the fault's instant: the CAS serving the most sessions
            host = hosts.get(target) if isinstance(target, str) else None
            if host is None or host.role not in cls.target_roles:
                allowed = sorted((h for h in hosts.values() if h.role in cls.target_roles), key=lambda h: h.ip)
                raise SpecError(source, f"{key}.target", f"a host of this topology whose role is one of "
                                                         f"{list(cls.target_roles)}: {[h.name for h in allowed]}",
                                target)
        if fault["at_s"] >= scenario["timing"]["observe_s"]:
            raise SpecError(source, f"{key}.at_s", f"a time before the end of the observation window "
                                                   f"(timing.observe_s = {scenario['timing']['observe_s']:g})",
                            fault["at_s"])
        missing = cls.requires - mode.capabilities
        if missing:
            raise SpecError(source, f"{key}.kind", f"a fault mode {mode.name} supports: {fault['kind']} needs "
                                                   f"{' and '.join(sorted(missing))}, which {mode.name} does not have",
                            fault["kind"])
        cls.check(fault, scenario, plan, source, key)


def _check_exchange(source: str, scenario: dict[str, Any], plan: LabPlan, hosts: dict) -> None:
    databases = [f"DB{i + 1}" for i in range(scenario["topology"]["databases"])]
    exchange = scenario["exchange"]
    for db in exchange["created_before_array"]:
        if db not in databases:
            raise SpecError(source, "exchange.created_before_array", f"databases of this topology {databases}", db)
    allowed = server_names(scenario, plan)
    for db, server in exchange["rpc_client_access_server"].items():
        if db not in databases:
            raise SpecError(source, f"exchange.rpc_client_access_server.{db}",
                            f"a database of this topology {databases}", db)
        if server not in allowed:
            raise SpecError(source, f"exchange.rpc_client_access_server.{db}", f"one of {allowed}", server)
    sites = [s.name for s in plan.sites]
    for i, array in enumerate(scenario["arrays"] or []):
        if array["site"] not in sites:
            raise SpecError(source, f"arrays[{i}].site", f"a site of this topology {sites}", array["site"])
        if not plan.by_role("cas", array["site"]):
            raise SpecError(source, f"arrays[{i}].site", "a site with CAS servers", array["site"])
        shadowed = array["fqdn"].split(".")[0] if array["fqdn"].endswith("." + LAB_DOMAIN) else None
        if shadowed in hosts or array["fqdn"] in {f"{h}.{LAB_DOMAIN}" for h in hosts}:
            raise SpecError(source, f"arrays[{i}].fqdn", "a name that is not a lab host's", array["fqdn"])


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


def load(name: str | None, overrides: list[str] | None = None) -> tuple[dict[str, Any], Path]:
    path = resolve_path(name)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(str(path), "(syntax)", f"valid TOML ({exc})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(str(path), "(file)", f"a readable UTF-8 file ({exc})") from None
    raw = apply_overrides(raw, overrides or [])
    return validate(raw, str(path)), path


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
            scenario["label"] = mode + "".join(f" {k}={_show(v)}" for k, v in scenario["params"].items())
            out.append(scenario)
    return out


def _show(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)
