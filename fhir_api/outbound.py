"""Every HTTP call this server makes to an address a client chose (JWKS URLs, subscription endpoints).

One rule against server-side request forgery: the host must resolve only to public addresses, unless the
operator allows private ones (tests and the demo). A checked address is then the one connected to: the
request goes to the resolved IP (TLS still verifies the certificate against the host name), so a DNS answer
that changes between the check and the connection cannot point the call into the hospital's network.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests
from requests.adapters import HTTPAdapter

USER_AGENT = "fhir-api"


class UnsafeTarget(ValueError):
    """The URL may not be called: the message says why (it never names a resolved address)."""


@dataclass(frozen=True)
class Target:
    """A URL whose host was resolved and checked, and the address to connect to."""

    url: str
    host: str
    port: int
    address: str | None  # None: connect by name (private addresses allowed, nothing to pin)


def check(url: str, *, allow_private: bool, what: str = "The URL") -> Target:
    """Resolve and check ``url``: absolute http(s), https unless private targets are allowed, and every
    address the host resolves to public (not private, loopback, link-local, multicast or reserved)."""
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise UnsafeTarget(f"{what} must be an absolute http(s) URL")
    if parts.username or parts.password:
        raise UnsafeTarget(f"{what} must not carry credentials")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise UnsafeTarget(f"{what} has an invalid port") from None
    if allow_private:
        return Target(url, parts.hostname, port, None)
    if parts.scheme != "https":
        raise UnsafeTarget(f"{what} must use https")
    try:
        infos = socket.getaddrinfo(parts.hostname, port, proto=socket.IPPROTO_TCP)
    except OSError:
        raise UnsafeTarget(f"{what}'s host does not resolve") from None
    addresses = []
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if not public(address):
            raise UnsafeTarget(f"{what} points at a private, loopback or link-local address")
        addresses.append(str(address))
    return Target(url, parts.hostname, port, addresses[0])


_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")


def public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """A globally routable unicast address, IPv4 inside IPv6 included: mapped (::ffff:a.b.c.d),
    compatible (::a.b.c.d), 6to4 (2002::/16) and NAT64 (64:ff9b::/96, which reaches IPv4 networks)."""
    if not address.is_global or address.is_multicast:
        return False
    if isinstance(address, ipaddress.IPv6Address):
        if address.is_site_local or address in _NAT64_LOCAL:
            return False
        inner = address.ipv4_mapped or address.sixtofour
        if inner is None and (address in _NAT64 or int(address) >> 32 == 0):
            inner = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if inner is not None:
            return public(inner)
    return True


class _PinnedAdapter(HTTPAdapter):
    """Connects to the checked address while TLS (SNI and certificate) still uses the host name."""

    def __init__(self, host: str) -> None:
        self._host = host
        super().__init__(max_retries=0)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["server_hostname"] = self._host
        kwargs["assert_hostname"] = self._host
        super().init_poolmanager(*args, **kwargs)


def _pinned_url(target: Target) -> str:
    parts = urlsplit(target.url)
    assert target.address is not None
    address = f"[{target.address}]" if ":" in target.address else target.address
    netloc = f"{address}:{parts.port}" if parts.port else address
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))


def send(
    method: str,
    target: Target,
    *,
    headers: dict[str, str],
    data: bytes | None = None,
    timeout: float,
    max_bytes: int,
    cert: tuple[str, str] | None = None,
) -> tuple[requests.Response, bytes]:
    """One request, no redirects followed, the answer read up to ``max_bytes`` (the rest is dropped)."""
    headers = {"User-Agent": USER_AGENT, **headers}
    with requests.Session() as session:
        url = target.url
        if target.address is not None:
            url = _pinned_url(target)
            headers["Host"] = target.host if target.port in (80, 443) else f"{target.host}:{target.port}"
            session.mount(f"{urlsplit(url).scheme}://", _PinnedAdapter(target.host))
        with session.request(
            method,
            url,
            headers=headers,
            data=data,
            timeout=timeout,
            stream=True,
            allow_redirects=False,
            cert=cert,
        ) as resp:
            body = b""
            if max_bytes > 0:
                for chunk in resp.iter_content(8192):
                    body += chunk
                    if len(body) >= max_bytes:
                        body = body[:max_bytes]
                        break
            return resp, body
