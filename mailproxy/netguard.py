"""The private-address rule (§10) for outbound HTTP to URLs a tenant wrote.

A host is refused when any of its addresses is loopback, private, link-local, carrier-grade
NAT, multicast, unspecified or reserved (IPv4-mapped IPv6 included), unless
GMP_ATTACHMENT_ALLOW_PRIVATE allows it. The check runs inside the connector's resolver, so
the connection goes to the very addresses that were checked: no second lookup an attacker's
DNS could answer differently.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_CGNAT = ipaddress.ip_network("100.64.0.0/10")


class AddressRefused(OSError):
    """The host resolves to an address the private-address rule refuses."""


@dataclass(frozen=True, slots=True)
class AllowList:
    everything: bool = False
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    hosts: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, text: str | None) -> AllowList:
        """GMP_ATTACHMENT_ALLOW_PRIVATE: comma-separated CIDRs or host names; `*` = all."""
        networks = []
        hosts = set()
        for item in (text or "").split(","):
            item = item.strip()
            if item == "*":
                return cls(everything=True)
            if not item:
                continue
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                hosts.add(item.lower().rstrip("."))
        return cls(networks=tuple(networks), hosts=frozenset(hosts))

    def allows_host(self, host: str) -> bool:
        return self.everything or host.lower().rstrip(".") in self.hosts

    def allows_address(self, ip: IPAddress) -> bool:
        return self.everything or any(ip in net for net in self.networks
                                      if net.version == ip.version)


def is_restricted(ip: IPAddress) -> bool:
    """True for the address classes a tenant-written URL may not reach."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return (
        ip.is_loopback or ip.is_private or ip.is_link_local or ip.is_multicast
        or ip.is_unspecified or ip.is_reserved
        or (isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT)
    )


def check_address(host: str, address: str, allow: AllowList) -> None:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if is_restricted(ip) and not allow.allows_address(ip) and not allow.allows_host(host):
        raise AddressRefused(f"{host} resolves to a non-public address ({ip}), refused")


def check_literal(host: str, allow: AllowList) -> None:
    """IP-literal hosts never reach the resolver, so they are checked up front."""
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return
    check_address(host, host.strip("[]"), allow)


class GuardedResolver(AbstractResolver):
    """Resolves like aiohttp's threaded resolver, then refuses non-public answers."""

    def __init__(self, allow: AllowList) -> None:
        self._allow = allow
        self._inner = ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        for result in found:
            check_address(host, result["host"], self._allow)
        return found

    async def close(self) -> None:
        await self._inner.close()
