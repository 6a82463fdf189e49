"""The address guard: which resolved IP addresses the fetcher may connect to.

Checked after DNS resolution and before connecting, on every redirect hop, and the
connection is made to the checked address itself, so a second lookup (DNS rebinding)
cannot swap it for another.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]


def system_resolver(host: str, port: int) -> list[str]:
    """Resolve with the system resolver, keeping order and dropping repeats."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    seen: dict[str, None] = {}
    for _family, _type, _proto, _canon, sockaddr in infos:
        seen.setdefault(str(sockaddr[0]), None)
    return list(seen)


def _non_public_reason(ip: IPAddress) -> str | None:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return _non_public_reason(ip.ipv4_mapped)
    for attr, label in (
        # the specific kinds first: ipaddress counts most of them as private too
        ("is_loopback", "loopback"),
        ("is_link_local", "link-local"),
        ("is_multicast", "multicast"),
        ("is_unspecified", "unspecified"),
        ("is_reserved", "reserved"),
        ("is_private", "private"),
    ):
        if getattr(ip, attr):
            return label
    if not ip.is_global:
        return "non-global"
    return None


@dataclass(frozen=True)
class AddressGuard:
    """Refuses non-public addresses unless they fall in an allowed network."""

    allow_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    @classmethod
    def from_cidrs(cls, cidrs: Iterable[str]) -> AddressGuard:
        return cls(tuple(ipaddress.ip_network(c, strict=False) for c in cidrs))

    def refusal(self, address: str) -> str | None:
        """None when ``address`` may be connected to, else why not."""
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return f"not an IP address: {address!r}"
        if any(ip.version == net.version and ip in net for net in self.allow_networks):
            return None
        reason = _non_public_reason(ip)
        if reason is None:
            return None
        return f"{address} is a {reason} address (allow it with --allow-networks)"
