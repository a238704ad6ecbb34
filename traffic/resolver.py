"""Name resolution as an Outlook client on Windows sees it.

Static targets (a profile bound to an address) and DNS names resolved through the lab's
own DNS server with dnspython. Answers are cached for their TTL, capped at 86400 s as
the Windows DNS client does, so clients keep a dead address until the TTL runs out.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import dns.asyncresolver
import dns.exception
import dns.resolver

from labcommon.programs import TargetConfig

WINDOWS_MAX_TTL_S = TargetConfig.max_ttl_s  # the Windows DNS client's cap, declared there once


class ResolveError(Exception):
    """The name could not be resolved."""


@dataclass
class StaticTarget:
    """A profile bound to fixed addresses (no DNS involved)."""

    addresses: list[str]

    async def resolve(self) -> list[str]:
        return list(self.addresses)

    def describe(self) -> str:
        return ",".join(self.addresses)


@dataclass
class DnsTarget:
    """A name resolved through one DNS server, cached by TTL like Windows does."""

    name: str
    server: str
    timeout_s: float = 1.0
    max_ttl_s: int = WINDOWS_MAX_TTL_S
    _cache: tuple[float, list[str]] | None = field(default=None, repr=False)

    def _resolver(self) -> dns.asyncresolver.Resolver:
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [self.server]
        resolver.timeout = self.timeout_s
        resolver.lifetime = self.timeout_s
        return resolver

    async def resolve(self) -> list[str]:
        now = time.monotonic()
        if self._cache is not None and self._cache[0] > now:
            return list(self._cache[1])
        try:
            answer = await self._resolver().resolve(self.name, "A")
        except (dns.exception.DNSException, OSError) as exc:
            raise ResolveError(f"{self.name}: {type(exc).__name__}") from None
        addresses = [record.address for record in answer]
        ttl = min(answer.rrset.ttl, self.max_ttl_s)
        self._cache = (now + ttl, addresses)
        return list(addresses)

    def describe(self) -> str:
        return f"{self.name}@{self.server}"


def target_from_config(config: TargetConfig) -> StaticTarget | DnsTarget:
    if config.kind == "address":
        return StaticTarget(list(config.addresses))
    if config.kind == "dns":
        return DnsTarget(config.name, config.server, config.timeout_ms / 1000, config.max_ttl_s)
    raise ValueError(f"unknown target kind {config.kind!r}")
