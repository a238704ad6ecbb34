"""Experiment specs: TOML files in ``experiments/``, validated before anything starts.

A spec is checked against ``SCHEMA`` as a whole before any network is built: an unknown
key, a wrong type or an impossible value is a ``SpecError`` naming the file, the key and
what was expected. ``--set key=value`` overrides go through the same checks. The fully
resolved spec (defaults filled in) is what the runner uses and what each manifest keeps.
"""

from __future__ import annotations

import copy
import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

MODES = ("direct", "dns-rr", "wnlb", "haproxy", "sdn-nlb")
FAULT_KINDS = ("crash", "poweroff", "freeze", "link-cut", "drain", "rejoin", "dag-switchover",
               "controller-crash", "rebind")
AFFINITIES = ("none", "single", "network")
HOST_NAME = re.compile(r"^(cas|mbx|cl|ad|lb|dns|r)\d+$")
EXPERIMENTS_DIR = Path(__file__).resolve().parent.parent / "experiments"


class SpecError(ValueError):
    """A spec is wrong; the message names the file, the key and what was expected."""

    def __init__(self, source: str, key: str, expected: str, got: Any = None):
        self.source, self.key, self.expected = source, key, expected
        got_text = "" if got is None else f", got {got!r}"
        super().__init__(f"{source}: {key}: expected {expected}{got_text}")


@dataclass(frozen=True)
class Field:
    kind: type | tuple[type, ...]
    default: Any
    check: Callable[[Any], bool] | None = None
    expected: str = ""


def _positive(v) -> bool:
    return v > 0


def _non_negative(v) -> bool:
    return v >= 0


def _one_of(options) -> Callable[[Any], bool]:
    return lambda v: v in options


def _list_of(kind, pred=None) -> Callable[[Any], bool]:
    return lambda v: all(isinstance(x, kind) and not isinstance(x, bool) and (pred is None or pred(x)) for x in v)


NUM = (int, float)


def int_range(default: int, low: int, high: int) -> Field:
    return Field(int, default, lambda v: low <= v <= high, f"an integer from {low} to {high}")


SCHEMA: dict[str, dict[str, Field]] = {
    "experiment": {
        "name": Field(str, "experiment", lambda v: bool(re.fullmatch(r"[A-Za-z0-9_.-]+", v)),
                      "a name of letters, digits, '_', '.', '-'"),
        "description": Field(str, ""),
        "repetitions": int_range(1, 1, 50),
        "seed": Field(int, 1, _non_negative, "a non-negative integer"),
        "modes": Field(list, ["sdn-nlb"], lambda v: bool(v) and _list_of(str, lambda m: m in MODES)(v),
                       f"a non-empty list of modes from {list(MODES)}"),
    },
    "topology": {
        "cas": int_range(3, 1, 8),
        "mailboxes": int_range(2, 1, 4),
        "client_hosts": int_range(2, 1, 8),
        "branch": Field(bool, False),
        "branch_cas": int_range(2, 0, 4),
        "branch_client_hosts": int_range(1, 0, 4),
        "databases": int_range(2, 1, 8),
        "wan_bw_mbit": Field(NUM, 0, lambda v: 0 <= v <= 10000, "Mbit/s from 0 (unlimited) to 10000"),
        "wan_delay_ms": Field(NUM, 0, lambda v: 0 <= v <= 5000,
                              "milliseconds from 0 to 5000 (needs sch_netem; skipped with a notice without it)"),
    },
    "clients": {
        "sessions_per_host": int_range(8, 1, 500),
        "interval_ms": int_range(50, 5, 60000),
        "op_timeout_ms": int_range(1000, 10, 600000),
        "connect_timeout_ms": int_range(1000, 10, 600000),
        "backoff_ms": Field(list, [0, 100, 250, 500, 1000, 2000], lambda v: bool(v) and _list_of(int, _non_negative)(v),
                            "a non-empty list of non-negative integers"),
        "select": Field(str, "next_on_fail", _one_of(("first", "next_on_fail")), "'first' or 'next_on_fail'"),
        "distinct_source_ips": Field(bool, False),
        "ops": Field(dict, {"read": 4, "send": 2, "sync": 1, "ping": 3},
                     lambda v: bool(v) and all(k in ("read", "send", "sync", "ping") and isinstance(w, int)
                                               and not isinstance(w, bool) and w >= 0 for k, w in v.items())
                     and sum(v.values()) > 0,
                     "a table of weights for read/send/sync/ping (non-negative integers, not all zero)"),
        "bind": Field(str, "array", _one_of(("array", "cas1", "server")),
                      "'array' (profile points at the array name) or 'server' (at one CAS)"),
    },
    "timing": {
        "warmup_s": Field(NUM, 2.0, lambda v: 0.5 <= v <= 600, "a number of seconds from 0.5 to 600"),
        "observe_s": Field(NUM, 8.0, lambda v: 1 <= v <= 3600, "a number of seconds from 1 to 3600"),
        "ready_timeout_s": Field(NUM, 20.0, lambda v: 1 <= v <= 300, "a number of seconds from 1 to 300"),
    },
    "nlb": {
        "fast_fail": Field(bool, True),
        "affinity": Field(str, "none", _one_of(AFFINITIES), f"one of {list(AFFINITIES)}"),
        "probe_interval_ms": int_range(100, 10, 60000),
        "probe_timeout_ms": int_range(100, 10, 60000),
        "fall": int_range(2, 1, 20),
        "rise": int_range(2, 1, 20),
        "probes": Field(bool, True),
    },
    "dns": {
        "ttl_s": Field(int, 300, lambda v: 0 <= v <= 2_147_483_647, "a TTL in seconds from 0 to 2147483647"),
    },
    "haproxy": {
        "inter_ms": int_range(2000, 10, 600000),
        "fall": int_range(3, 1, 100),
        "rise": int_range(2, 1, 100),
        "shutdown_sessions": Field(bool, False),
    },
    "wnlb": {
        "heartbeat_ms": int_range(1000, 10, 60000),
        "missed": int_range(5, 1, 100),
        "convergence_ms": int_range(2500, 0, 60000),
        "affinity": Field(str, "single", _one_of(AFFINITIES), f"one of {list(AFFINITIES)}"),
    },
    "exchange": {
        "rpc_client_access_server": Field(
            dict, {}, lambda v: all(re.fullmatch(r"DB\d+", k) and isinstance(x, str)
                                    and re.fullmatch(r"(array:[A-Za-z]+|[a-z0-9.-]+)", x) for k, x in v.items()),
            "a table of database = server, e.g. { DB1 = \"cas2\" } or { DB1 = \"array:HQ\" }"),
        "created_before_array": Field(list, [], _list_of(str, lambda d: bool(re.fullmatch(r"DB\d+", d))),
                                      "a list of database names like [\"DB1\"]"),
        "autodiscover_refresh_s": Field(NUM, 3600, lambda v: 1 <= v <= 86400,
                                        "seconds from 1 to 86400 (Outlook: one hour)"),
    },
    "probe": {
        "rate_hz": Field(NUM, 20, lambda v: 0 <= v <= 100, "a rate from 0 (off) to 100 probes per second"),
        "capture": Field(bool, True),
    },
    "metrics": {
        "late_ms": int_range(500, 1, 600000),
        "min_cpu_idle_pct": Field(NUM, 35, lambda v: 0 <= v <= 100, "a percentage from 0 to 100"),
    },
}

FAULT_FIELDS: dict[str, Field] = {
    "kind": Field(str, None, _one_of(FAULT_KINDS), f"one of {list(FAULT_KINDS)}"),
    "target": Field((str, list), None, None, "a host name like 'cas1' or a list of them"),
    "at_s": Field(NUM, 0.0, _non_negative, "a non-negative number of seconds after warm-up"),
    "deadline_s": Field(NUM, 30.0, _non_negative, "a non-negative number of seconds"),
    "database": Field(str, "DB1", lambda v: bool(re.fullmatch(r"DB\d+", v)), "a database name like 'DB1'"),
    "to": Field(str, "", None, "a host name"),
    "restart_after_s": Field(NUM, 2.0, _non_negative, "a non-negative number of seconds"),
}


def _check_value(source: str, key: str, field: Field, value: Any) -> Any:
    kinds = field.kind if isinstance(field.kind, tuple) else (field.kind,)
    if isinstance(value, bool) and bool not in kinds:
        raise SpecError(source, key, field.expected or _kind_name(kinds), value)
    if not isinstance(value, kinds):
        raise SpecError(source, key, field.expected or _kind_name(kinds), value)
    if field.check is not None and not field.check(value):
        raise SpecError(source, key, field.expected, value)
    return float(value) if kinds == NUM else value


def _kind_name(kinds: tuple[type, ...]) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
             list: "a list", dict: "a table"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _check_fault(source: str, index: int, raw: Any) -> dict[str, Any]:
    prefix = f"faults[{index}]"
    if not isinstance(raw, dict):
        raise SpecError(source, prefix, "a table with kind, target, at_s", raw)
    unknown = set(raw) - set(FAULT_FIELDS)
    if unknown:
        raise SpecError(source, f"{prefix}.{sorted(unknown)[0]}", f"one of the keys {sorted(FAULT_FIELDS)}")
    if "kind" not in raw:
        raise SpecError(source, f"{prefix}.kind", f"one of {list(FAULT_KINDS)} (missing)")
    fault = {}
    for key, field in FAULT_FIELDS.items():
        value = raw.get(key, field.default)
        if value is None:
            continue
        fault[key] = _check_value(source, f"{prefix}.{key}", field, value)
    targets = fault.get("target", [])
    targets = [targets] if isinstance(targets, str) else targets
    needs_target = fault["kind"] not in ("controller-crash", "dag-switchover", "rebind")
    if fault["kind"] == "rebind" and not fault.get("to"):
        raise SpecError(source, f"{prefix}.to", "the new RpcClientAccessServer, e.g. \"array:HQ\" or \"cas2\" (missing)")
    if needs_target and not targets:
        raise SpecError(source, f"{prefix}.target", "a host name like 'cas1' or a list of them (missing)")
    for target in targets:
        if not isinstance(target, str) or not HOST_NAME.match(target):
            raise SpecError(source, f"{prefix}.target", "host names like 'cas1', 'mbx2'", target)
    fault["target"] = list(targets)
    return fault


def validate(raw: dict[str, Any], source: str) -> dict[str, Any]:
    """Check a parsed spec and return it with every default filled in."""
    if not isinstance(raw, dict):
        raise SpecError(source, "(top level)", "a TOML document")
    allowed = set(SCHEMA) | {"faults", "sweep", "arrays"}
    for section in raw:
        if section not in allowed:
            raise SpecError(source, section, f"one of the sections {sorted(allowed)}")
    spec: dict[str, Any] = {}
    for section, fields in SCHEMA.items():
        given = raw.get(section, {})
        if not isinstance(given, dict):
            raise SpecError(source, section, "a table", given)
        for key in given:
            if key not in fields:
                raise SpecError(source, f"{section}.{key}", f"one of the keys {sorted(fields)}")
        spec[section] = {key: _check_value(source, f"{section}.{key}", field, given.get(key, copy.deepcopy(field.default)))
                         for key, field in fields.items()}
    faults = raw.get("faults", [])
    if not isinstance(faults, list):
        raise SpecError(source, "faults", "an array of tables ([[faults]])", faults)
    spec["faults"] = [_check_fault(source, i, f) for i, f in enumerate(faults)]
    spec["sweep"] = _check_sweep(source, raw.get("sweep", {}))
    spec["arrays"] = _check_arrays(source, raw.get("arrays"))
    _check_consistency(source, spec)
    return spec


ARRAY_FIELDS = {"name": re.compile(r"^[A-Za-z0-9 _.-]{1,64}$"),
                "fqdn": re.compile(r"^[a-z0-9-]+(\.[a-z0-9-]+)+$"), "site": re.compile(r"^(HQ|Branch)$")}


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
                raise SpecError(source, f"arrays[{i}].{key}", f"one of the keys {sorted(ARRAY_FIELDS)}")
        for key, pattern in ARRAY_FIELDS.items():
            value = entry.get(key)
            if not isinstance(value, str) or not pattern.match(value):
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
        out[key] = [_check_value(source, f"sweep.{key}", SCHEMA[section][name], v) for v in values]
    return out


def _check_consistency(source: str, spec: dict[str, Any]) -> None:
    topo = spec["topology"]
    limits = {"cas": topo["cas"] + (topo["branch_cas"] if topo["branch"] else 0),
              "mbx": topo["mailboxes"] + (1 if topo["branch"] else 0),
              "cl": topo["client_hosts"] + (topo["branch_client_hosts"] if topo["branch"] else 0)}
    for i, fault in enumerate(spec["faults"]):
        for target in fault["target"]:
            prefix = re.match(r"[a-z]+", target).group(0)
            number = int(target[len(prefix):])
            if prefix in limits and not 1 <= number <= limits[prefix]:
                raise SpecError(source, f"faults[{i}].target",
                                f"a host that exists in this topology ({prefix}1..{prefix}{limits[prefix]})", target)
        window = spec["timing"]["observe_s"]
        if fault["at_s"] >= window:
            raise SpecError(source, f"faults[{i}].at_s", f"a time before the end of the observation window "
                                                        f"(timing.observe_s = {window})", fault["at_s"])
        if fault["kind"] == "controller-crash" and spec["experiment"]["modes"] != ["sdn-nlb"] and \
                "sdn-nlb" not in spec["experiment"]["modes"]:
            raise SpecError(source, f"faults[{i}].kind", "controller-crash only with mode sdn-nlb")
    for key in ("wan_bw_mbit", "wan_delay_ms"):
        if topo[key] and not topo["branch"]:
            raise SpecError(source, f"topology.{key}", "0 without a Branch site (topology.branch = true): "
                                                       "there is no WAN link to shape", topo[key])
    databases = {f"DB{i + 1}" for i in range(topo["databases"])}
    exchange = spec["exchange"]
    for db in list(exchange["rpc_client_access_server"]) + exchange["created_before_array"]:
        if db not in databases:
            raise SpecError(source, "exchange", f"databases of this topology ({', '.join(sorted(databases))})", db)
    sites = {"HQ"} | ({"Branch"} if topo["branch"] else set())
    array_sites = sites if spec["arrays"] is None else {a["site"] for a in spec["arrays"]}
    for i, array in enumerate(spec["arrays"] or []):
        if array["site"] not in sites:
            raise SpecError(source, f"arrays[{i}].site", f"a site of this topology {sorted(sites)}", array["site"])
    for db, server in exchange["rpc_client_access_server"].items():
        if server.startswith("array:") and server[6:] not in array_sites:
            raise SpecError(source, f"exchange.rpc_client_access_server.{db}",
                            f"an array that exists, one of {sorted('array:' + s for s in array_sites)}", server)
    for i, fault in enumerate(spec["faults"]):
        to = fault.get("to", "")
        if fault["kind"] == "rebind" and to.startswith("array:") and to[6:] not in array_sites:
            raise SpecError(source, f"faults[{i}].to",
                            f"an array that exists, one of {sorted('array:' + s for s in array_sites)}", to)
    for i, fault in enumerate(spec["faults"]):
        if fault["kind"] in ("rebind", "dag-switchover") and fault["database"] not in databases:
            raise SpecError(source, f"faults[{i}].database", f"one of {sorted(databases)}", fault["database"])
    clients = spec["clients"]
    if clients["distinct_source_ips"] and clients["sessions_per_host"] > 250:
        raise SpecError(source, "clients.sessions_per_host", "at most 250 with clients.distinct_source_ips "
                                                            "(one address per session)", clients["sessions_per_host"])


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
            raise SpecError("--set", key, f"a section from {sorted(SCHEMA)}")
        raw.setdefault(section, {})
        if not isinstance(raw[section], dict):
            raise SpecError("--set", key, "a table section")
        raw[section][name] = value
    return raw


def resolve_path(name: str | None) -> Path:
    """A spec path, or a bare name looked up in experiments/ ('default' if None)."""
    if name is None:
        return EXPERIMENTS_DIR / "default.toml"
    path = Path(name)
    if path.exists():
        return path
    candidate = EXPERIMENTS_DIR / (name if name.endswith(".toml") else f"{name}.toml")
    if candidate.exists():
        return candidate
    raise SpecError(str(path), "(file)", "an existing TOML file or the name of one in experiments/")


def load(name: str | None, overrides: list[str] | None = None) -> tuple[dict[str, Any], Path]:
    path = resolve_path(name)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(str(path), "(syntax)", f"valid TOML ({exc})") from None
    except OSError as exc:
        raise SpecError(str(path), "(file)", f"a readable file ({exc.strerror})") from None
    raw = apply_overrides(raw, overrides or [])
    return validate(raw, str(path)), path


def scenarios(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Expand modes x sweep points into scenarios, each a resolved spec of its own."""
    sweep_keys = sorted(spec["sweep"])
    points = list(itertools.product(*(spec["sweep"][k] for k in sweep_keys))) or [()]
    out = []
    for mode in spec["experiment"]["modes"]:
        for point in points:
            scenario = copy.deepcopy(spec)
            scenario["mode"] = mode
            scenario["params"] = dict(zip(sweep_keys, point))
            for key, value in scenario["params"].items():
                section, name = key.split(".")
                scenario[section][name] = value
            label = mode + "".join(f" {k}={v}" for k, v in scenario["params"].items())
            scenario["label"] = label
            out.append(scenario)
    return out
