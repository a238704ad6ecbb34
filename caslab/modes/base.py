"""The mode base class and the registry its subclasses join (``caslab.modes`` loads
every member module; the members import this module, never the package, so the
registry has no import cycle)."""


from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from caslab.base.table import Column
from caslab.schema.fields import Field
from labcommon.ports import AUTODISCOVER_PORT
from labcommon.programs import NlbConfig, TargetConfig
from topologies.plan import LAB_DOMAIN, HostPlan

if TYPE_CHECKING:
    from caslab.network.context import RunContext

MODES: dict[str, type["Mode"]] = {}


class Mode:
    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    section: ClassVar[str | None] = None
    settings: ClassVar[dict[str, Field]] = {}
    capabilities: ClassVar[frozenset[str]] = frozenset()
    controller_app: ClassVar[str] = "controllers.l2_switch"
    rotate_answers: ClassVar[bool] = False  # dns-rr: sessions start at different A records
    multi_switch: ClassVar[bool] = True     # works when CAS sit behind hypervisor switches
    multi_role_refusal: ClassVar[str | None] = None  # why it cannot run on multi-role servers
    admin_api: ClassVar[bool] = False       # its load balancer serves the lab's NLB admin API
    colour: ClassVar[str] = ""              # its curves' colour ("" : a fixed pick by name)
    line: ClassVar[object] = "-"            # and line style (matplotlib)
    columns: ClassVar[tuple[Column, ...]] = ()  # results columns only this mode measures

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.name:
            if cls.name in MODES:
                raise TypeError(f"mode {cls.name!r} is defined twice")
            MODES[cls.name] = cls

    def controller_config(self, ctx: "RunContext") -> NlbConfig | None:
        return None

    def array_addresses(self, ctx: "RunContext") -> dict[str, list[str]]:
        """Site name -> the addresses the array FQDN resolves to in this mode."""
        raise NotImplementedError

    def prepare(self, ctx: "RunContext") -> None:
        """Configure hosts and switches before any role starts (the network is up)."""

    def start(self, ctx: "RunContext") -> None:
        """Start this mode's own processes, after the roles are up."""

    def measure_start(self, ctx: "RunContext") -> None:
        """The measurement window opens (reset this mode's own counters)."""

    def measure_end(self, ctx: "RunContext") -> None:
        """The measurement window closed (log this mode's own counters)."""

    def default_rcas(self, ctx: "RunContext") -> str:
        """The RpcClientAccessServer databases get: the HQ array's FQDN where there is one,
        else (no array in HQ) the name of HQ's first CAS."""
        hq = ctx.plan.sites[0].name
        arrays = ctx.arrays()
        return arrays[hq]["fqdn"] if hq in arrays else f"{ctx.plan.by_role('cas', hq)[0].name}.{LAB_DOMAIN}"

    def target(self, ctx: "RunContext", client: HostPlan) -> TargetConfig:
        """Every mode: autodiscover of the client's site -> profile server name -> DNS."""
        ad = ctx.plan.by_role("autodiscover", client.site)[0]
        return TargetConfig(kind="autodiscover", address=f"{ad.ip}:{AUTODISCOVER_PORT}", dns=ctx.dns_server,
                            refresh_s=ctx.spec["exchange"]["autodiscover_refresh_s"], rotate=self.rotate_answers)

    def drain(self, ctx: "RunContext", host: str, deadline_s: float) -> None:
        raise NotImplementedError(f"mode {self.name} has no load balancer to drain")

    def rejoin(self, ctx: "RunContext", host: str) -> None:
        raise NotImplementedError(f"mode {self.name} has no load balancer to rejoin")


class VipMode(Mode):
    """Modes where the array name resolves to a virtual IP (one per site with CAS)."""

    def array_addresses(self, ctx):
        return {site.name: [site.vip] for site in ctx.plan.sites if ctx.plan.by_role("cas", site.name)}


def mode_for(name: str) -> Mode:
    """A new instance of the mode, for one run."""
    try:
        return MODES[name]()
    except KeyError:
        raise ValueError(f"mode {name!r} is not implemented; available: {sorted(MODES)}") from None
