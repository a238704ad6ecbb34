"""Spec checks of the Exchange organisation: arrays (New-ClientAccessArray), where the
databases live, and what each database's RpcClientAccessServer may name.

Split from ``caslab.spec.experiment`` (which re-exports these names); the same rules: a SpecError
names the file, the key and what was expected, before any network is built.
"""

from __future__ import annotations

import difflib
import re
from typing import Any

from caslab.schema.fields import SpecError, list_of
from topologies.plan import LAB_DOMAIN, LabPlan

def unknown_key(source: str, key: str, known) -> SpecError:
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], sorted(known), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return SpecError(source, key, f"one of the keys {sorted(known)}{hint}")


ARRAY_FIELDS = {"name": re.compile(r"[A-Za-z0-9 _.-]{1,64}"), "fqdn": re.compile(r"[a-z0-9-]{1,63}(\.[a-z0-9-]{1,63})+"),
                "site": re.compile(r"HQ|Branch")}
ARRAY_OPTIONAL = {"records": "a list of CAS host names whose addresses the array FQDN resolves to (the A records "
                             "an admin made by hand), e.g. [\"cas1\", \"cas3\"]"}


def check_arrays(source: str, arrays: Any) -> list[dict[str, str]] | None:
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
            if key not in ARRAY_FIELDS and key not in ARRAY_OPTIONAL:
                raise unknown_key(source, f"arrays[{i}].{key}", {**ARRAY_FIELDS, **ARRAY_OPTIONAL})
        records = entry.get("records")
        if records is not None and not (isinstance(records, list) and records and list_of(str)(records)
                                        and len(set(records)) == len(records)):
            raise SpecError(source, f"arrays[{i}].records", ARRAY_OPTIONAL["records"], records)
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


def check_exchange(source: str, scenario: dict[str, Any], plan: LabPlan, hosts: dict) -> None:
    databases = [f"DB{i + 1}" for i in range(scenario["topology"]["databases"])]
    exchange = scenario["exchange"]
    for db in exchange["created_before_array"]:
        if db not in databases:
            raise SpecError(source, "exchange.created_before_array", f"databases of this topology {databases}", db)
    for db, site in exchange["database_site"].items():
        if db not in databases:
            raise SpecError(source, f"exchange.database_site.{db}", f"a database of this topology {databases}", db)
        with_mailboxes = [s.name for s in plan.sites if plan.by_role("mailbox", s.name)]
        if site not in with_mailboxes:
            raise SpecError(source, f"exchange.database_site.{db}", f"a site with mailbox servers {with_mailboxes}",
                            site)
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
        cas = [h.name for h in plan.by_role("cas")]
        for name in array.get("records") or []:
            if name not in cas:
                raise SpecError(source, f"arrays[{i}].records", f"CAS host names of this topology {cas}", name)
        shadowed = array["fqdn"].split(".")[0] if array["fqdn"].endswith("." + LAB_DOMAIN) else None
        if shadowed in hosts or array["fqdn"] in {f"{h}.{LAB_DOMAIN}" for h in hosts}:
            raise SpecError(source, f"arrays[{i}].fqdn", "a name that is not a lab host's", array["fqdn"])
