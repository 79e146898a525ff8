"""SSRF guard for URLs that users give us and that our servers then call (webhooks).

Two checks, both refusing with :class:`ForbiddenURL` (its message is the reason):
- :func:`check_url`, without DNS: only ``http``/``https``, a host, no credentials
  (``user:pass@``), and a host that is not a forbidden address written in any form
  (``127.0.0.1``, ``127.1``, ``0x7f000001``, ``2130706433``, ``0177.0.0.1``, ``[::1]``,
  ``[::ffff:127.0.0.1]``) nor a local or metadata name (``localhost``, ``*.localhost``,
  ``metadata.google.internal``). The API runs it at submission.
- :func:`resolve`, at send time: resolves the host and refuses if *any* address it resolves to is
  forbidden; the caller then connects to the returned address (pinned), so a later DNS answer
  cannot steer the call elsewhere.

Forbidden: every address that is not globally routable (loopback, private, link-local, shared
100.64/10, unspecified, reserved, documentation ...), multicast, the cloud metadata addresses,
and IPv6 forms that embed a forbidden IPv4 address (IPv4-mapped, 6to4, NAT64 64:ff9b::/96).
An :class:`AllowList` (CIDRs and host names) lifts the refusal for tests and private deployments;
metadata addresses stay refused even then.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Cloud instance-metadata endpoints (AWS, GCP, Azure, OCI, DigitalOcean, Alibaba, ECS tasks).
METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "169.254.170.2", "100.100.100.200", "fd00:ec2::254")
)
METADATA_HOSTS = frozenset({"metadata.google.internal", "metadata.goog", "metadata"})
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class ForbiddenURL(ValueError):
    """The URL must not be called; the message says why (safe to show the user)."""


class Unresolvable(OSError):
    """The host does not resolve now (may be transient: the caller may retry)."""


@dataclass(frozen=True)
class AllowList:
    """Addresses and hosts exempt from the address check (never from the scheme, credential or
    metadata checks). ``parse("127.0.0.1/32, ::1, hooks.internal")``: CIDRs or bare addresses,
    and host names (exact match, case-insensitive)."""

    networks: tuple[IPNetwork, ...] = ()
    hosts: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, spec: str | Iterable[str]) -> AllowList:
        items = spec.split(",") if isinstance(spec, str) else list(spec)
        networks: list[IPNetwork] = []
        hosts: set[str] = set()
        for raw in (i.strip() for i in items):
            if not raw:
                continue
            try:
                networks.append(ipaddress.ip_network(raw, strict=False))
            except ValueError:
                if not all(c.isalnum() or c in "-._" for c in raw):
                    raise ValueError(f"{raw!r} is neither a CIDR nor a host name") from None
                hosts.add(raw.lower().rstrip("."))
        return cls(tuple(networks), frozenset(hosts))

    def allows_host(self, host: str) -> bool:
        return host.lower().rstrip(".") in self.hosts

    def allows_ip(self, ip: IPAddress) -> bool:
        return any(ip.version == n.version and ip in n for n in self.networks)


NOTHING_ALLOWED = AllowList()


def literal_ip(host: str) -> IPAddress | None:
    """``host`` as an address if it is one in any notation ``inet_aton`` (and so the C resolver)
    accepts: dotted, shortened (``127.1``), hex (``0x7f000001``), octal, one decimal number."""
    h = host.strip("[]")
    try:
        return ipaddress.ip_address(h)
    except ValueError:
        pass
    if h and all(c in "0123456789abcdefxABCDEFX." for c in h):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(h))
        except OSError:
            return None
    return None


def _embedded_v4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def address_problem(ip: IPAddress, allow: AllowList = NOTHING_ALLOWED) -> str | None:
    """Why ``ip`` must not be called, or None when it may."""
    if ip in METADATA_ADDRESSES:
        return f"{ip} is a cloud metadata address"
    if isinstance(ip, ipaddress.IPv6Address):
        inner = _embedded_v4(ip)
        if inner is not None and inner in METADATA_ADDRESSES:
            return f"{ip} embeds the cloud metadata address {inner}"
    if allow.allows_ip(ip):
        return None
    if isinstance(ip, ipaddress.IPv6Address):
        inner = _embedded_v4(ip)
        if inner is not None:
            why = address_problem(inner, allow)
            return f"{ip} embeds {inner}: {why}" if why else None
    for name in ("loopback", "link_local", "multicast", "unspecified", "reserved", "private"):
        if getattr(ip, f"is_{name}"):
            return f"{ip} is a {name.replace('_', '-')} address"
    if not ip.is_global:
        return f"{ip} is not a public address"
    return None


@dataclass(frozen=True)
class Target:
    """A URL that passed :func:`check_url`: what to connect to and what to call it."""

    scheme: str  # http or https
    host: str  # the host as written (lower case, no brackets): Host header and TLS SNI
    port: int  # explicit or the scheme's default
    ip: IPAddress | None  # set when the host is an address literal

    @property
    def endpoint(self) -> str:
        """scheme://host:port, the unit of per-endpoint limits."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def check_url(url: str, allow: AllowList = NOTHING_ALLOWED) -> Target:
    """The URL's target, or :class:`ForbiddenURL` naming why it may not be called (no DNS)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ForbiddenURL(f"not a valid URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise ForbiddenURL(f"scheme {parts.scheme or '(none)'!r} is not allowed: use http or https")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise ForbiddenURL("credentials in the URL are not allowed")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise ForbiddenURL("the URL has no host")
    port = port or (443 if scheme == "https" else 80)
    ip = literal_ip(host)
    if host in METADATA_HOSTS:
        raise ForbiddenURL(f"{host} is a cloud metadata host")
    if ip is not None:
        why = address_problem(ip, allow)
        if why:
            raise ForbiddenURL(why)
        return Target(scheme, str(ip), port, ip)
    if (host == "localhost" or host.endswith(".localhost")) and not allow.allows_host(host):
        raise ForbiddenURL(f"{host} is a loopback host name")
    return Target(scheme, host, port, None)


async def resolve(target: Target, allow: AllowList = NOTHING_ALLOWED) -> IPAddress:
    """The address to connect to: the literal, or the first DNS answer, once every answer has
    passed :func:`address_problem` (one forbidden answer refuses the URL). A host on the
    allow-list skips the address check, not the resolution."""
    if target.ip is not None:
        return target.ip
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(
            target.host, target.port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
        )
    except OSError as exc:
        raise Unresolvable(f"{target.host} does not resolve: {exc}") from None
    return check_answers(target, [str(info[4][0]) for info in infos], allow)


def check_answers(
    target: Target, answers: list[str], allow: AllowList = NOTHING_ALLOWED
) -> IPAddress:
    """The first of ``answers`` (the addresses ``target.host`` resolved to) once every one has
    passed the address check; :class:`ForbiddenURL` if any is forbidden."""
    ips = [ipaddress.ip_address(a.split("%")[0]) for a in answers]
    if not ips:
        raise Unresolvable(f"{target.host} does not resolve")
    host_allowed = allow.allows_host(target.host)
    for ip in ips:
        if ip in METADATA_ADDRESSES:
            raise ForbiddenURL(f"{target.host} resolves to {ip}, a cloud metadata address")
        why = None if host_allowed else address_problem(ip, allow)
        if why:
            raise ForbiddenURL(f"{target.host} resolves to {why}")
    return ips[0]
