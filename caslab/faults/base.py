"""The fault base class and the registry its subclasses join (``caslab.faults`` loads
every member module; the members import this module, never the package, so the
registry has no import cycle)."""


from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from caslab.schema.fields import Field
from labcommon.catalogue import FAULT, FAULT_DONE, FAULT_UNDONE

if TYPE_CHECKING:
    from caslab.network.context import RunContext
    from topologies.plan import LabPlan

FAULTS: dict[str, type["Fault"]] = {}


class Fault:
    kind: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    fields: ClassVar[dict[str, Field]] = {}
    target_roles: ClassVar[tuple[str, ...]] = ("cas",)
    requires: ClassVar[frozenset[str]] = frozenset()
    affects: ClassVar[str] = "on_elements"
    fails_databases: ClassVar[bool] = False  # a dead server takes the databases active on it along
    example: ClassVar[dict[str, Any]] = {"target": "cas1"}
    example_topology: ClassVar[dict[str, Any]] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.kind:
            if cls.kind in FAULTS:
                raise TypeError(f"fault kind {cls.kind!r} is defined twice")
            FAULTS[cls.kind] = cls

    def __init__(self, spec: dict[str, Any]):
        self.spec = spec
        self.targets: list[str] = list(spec.get("target", []))
        self.at_s: float = spec.get("at_s", 0.0)
        self.index: int = spec.get("index", 0)

    # ---- declarations read by spec validation ------------------------------------------

    @classmethod
    def check(cls, fault: dict[str, Any], scenario: dict[str, Any], plan: "LabPlan", source: str, key: str) -> None:
        """Consistency with the scenario (beyond field types); raise SpecError."""

    # ---- what it does -----------------------------------------------------------------

    def elements(self, ctx: "RunContext") -> list[str]:
        """What this fault fails, decided at injection time."""
        elements = list(self.targets)
        if self.fails_databases:
            elements += [f"db:{db}" for db, layout in sorted(ctx.databases.items()) if layout.active in self.targets]
        return elements

    def label(self) -> str:
        return " ".join([self.kind, ",".join(self.targets)]).strip()

    def inject(self, ctx: "RunContext") -> None:
        raise NotImplementedError

    def undo(self, ctx: "RunContext") -> None:
        """Revert the fault (no-op for faults that cannot be reverted)."""


BUSIEST = "@busiest"  # a target chosen at the fault's instant: the CAS serving the most sessions


def fault_for(spec: dict[str, Any]) -> Fault:
    try:
        return FAULTS[spec["kind"]](spec)
    except KeyError:
        raise ValueError(f"fault {spec['kind']!r} is not implemented; available: {sorted(FAULTS)}") from None


def inject(ctx: "RunContext", spec: dict[str, Any]) -> Fault:
    """Log the fault (its instant is t_fault for the metrics), then inject it."""
    if BUSIEST in spec.get("target", []):
        spec = {**spec, "target": [ctx.busiest_cas() if t == BUSIEST else t for t in spec["target"]]}
    fault = fault_for(spec)
    ctx.log.emit(FAULT, kind=fault.kind, targets=fault.targets, elements=fault.elements(ctx), label=fault.label(),
                 index=fault.index, affects=fault.affects)
    fault.inject(ctx)
    ctx.log.emit(FAULT_DONE, kind=fault.kind, targets=fault.targets, index=fault.index)
    return fault


def undo(ctx: "RunContext", fault: Fault) -> None:
    fault.undo(ctx)
    ctx.log.emit(FAULT_UNDONE, kind=fault.kind, targets=fault.targets, index=fault.index)
