"""Per-client network allowlists: a client registered with ``--allow-ip`` is served only from there.

The allowlist is checked when the client asks for a token and again on every use of the token (a signed
``net`` claim carries it), so a token copied off the allowed network is refused wherever it is replayed.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class NetworkError(ValueError):
    """An allowlist entry that is not an address or CIDR block."""


def parse(entries: Iterable[str]) -> tuple[str, ...]:
    """Normalised CIDR blocks (``10.1.2.3`` -> ``10.1.2.3/32``); refuses anything else."""
    out: list[str] = []
    for entry in entries:
        for part in entry.replace(",", " ").split():
            try:
                out.append(str(ipaddress.ip_network(part, strict=False)))
            except ValueError:
                raise NetworkError(
                    f"{part!r} is not an IP address or CIDR block such as 10.20.0.0/16"
                ) from None
    return tuple(dict.fromkeys(out))


def allows(networks: Iterable[str], address: str | None) -> bool:
    """True when ``address`` lies in one of ``networks`` (an empty allowlist allows every address)."""
    blocks = list(networks)
    if not blocks:
        return True
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return any(ip in ipaddress.ip_network(block, strict=False) for block in blocks)
