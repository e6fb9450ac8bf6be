"""Where a user's webhook may go: public addresses only, unless the operator allows more.

A user names the URL, and Chute's worker sends to it from inside the deployment's
network: without this rule any user could make it POST to the cloud's metadata service,
a database's admin port or anything else only the server can reach. Names are resolved
once per attempt, each address is checked, and the request goes to the checked address
(its host name kept for `Host` and TLS), so a name that resolves differently the second
time (DNS rebinding) cannot slip past the check.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class PrivateAddress(Exception):
    """The URL's host is, or resolves to, an address that is not public."""


def is_public(ip: IPAddress) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def literal_problem(url: str) -> str | None:
    """Why a URL whose host is an IP address may not be used; None for a public one or a
    name (names are checked when they are resolved, at each delivery)."""
    host = urlsplit(url).hostname or ""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    return None if is_public(ip) else "names an address that is not public"


@dataclass(frozen=True)
class Target:
    """A request's URL with its host replaced by a checked address, and what keeps the
    original name: the `Host` header, and for https the name TLS verifies."""

    url: str
    headers: dict[str, str] = field(default_factory=dict)
    extensions: dict[str, Any] = field(default_factory=dict)


def pinned(url: str) -> Target:
    """`url` sent to a public address of its host; PrivateAddress if any address its host
    has is not public (a name with one private address among public ones is refused)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise OSError(f"the name {host!r} could not be resolved") from exc
    addresses = [ipaddress.ip_address(info[4][0]) for info in infos]
    if not addresses or not all(is_public(ip) for ip in addresses):
        raise PrivateAddress(host)
    ip = addresses[0]
    literal = f"[{ip}]" if ip.version == 6 else str(ip)
    netloc = f"{literal}:{parts.port}" if parts.port else literal
    # TLS checks the certificate against the name (an address in the URL: against it).
    named = not _is_address(host)
    extensions = {"sni_hostname": host} if parts.scheme == "https" and named else {}
    return Target(urlunsplit(parts._replace(netloc=netloc)), {"host": parts.netloc}, extensions)


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
