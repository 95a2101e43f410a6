"""Outbound HTTP for callbacks: SSRF guard, timeouts, no redirects, a response size cap.

A callback URL is refused unless it is http(s) and every address its host resolves to is
public. Loopback, private, link-local (including the 169.254.169.254 metadata service),
multicast, reserved and unspecified addresses are refused unless ``CALLBACK_ALLOW_HOSTS`` names
the host (or one of its addresses / a CIDR containing it). The connection is then made to the
address that was checked, so a DNS answer cannot change between check and use.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from . import errors

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class CallbackRefused(errors.ValidationFailed):
    """The callback URL is malformed or points somewhere it must not."""

    message = "callback URL refused"


@dataclass(frozen=True)
class Target:
    url: str
    host: str
    port: int
    address: str


def parse_url(url: str) -> tuple[str, str, int]:
    """Validate the shape of a callback URL; return (scheme, host, port)."""
    if not isinstance(url, str) or len(url) > 2048:
        raise CallbackRefused(details={"callback_url": ["must be an http(s) URL of at most 2048 characters"]})
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CallbackRefused(details={"callback_url": ["must be an absolute http or https URL"]})
    if parts.username or parts.password:
        raise CallbackRefused(details={"callback_url": ["must not contain credentials"]})
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise CallbackRefused(details={"callback_url": ["has an invalid port"]}) from None
    return parts.scheme, parts.hostname.lower(), port


def _allowed(host: str, addr: Address, allow: tuple[str, ...]) -> bool:
    for entry in allow:
        entry = entry.strip().lower()
        if not entry:
            continue
        if entry == host:
            return True
        try:
            if addr in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:
            continue
    return False


def is_public(addr: Address) -> bool:
    """True for globally routable unicast addresses."""
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    return not (addr.is_private or addr.is_loopback or addr.is_link_local or addr.is_multicast
                or addr.is_reserved or addr.is_unspecified or not addr.is_global)


def resolve(url: str, allow_hosts: tuple[str, ...]) -> Target:
    """Check ``url`` against the SSRF policy and pin the address to connect to."""
    _scheme, host, port = parse_url(url)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        raise CallbackRefused(details={"callback_url": ["host does not resolve"]}) from None
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
    for addr in addresses:
        if not is_public(addr) and not _allowed(host, addr, allow_hosts):
            raise CallbackRefused(details={"callback_url": [f"address {addr} is not allowed"]})
    return Target(url=url, host=host, port=port, address=str(addresses[0]))


def merge_headers(*layers: Mapping[str, str]) -> dict[str, str]:
    """Headers with each name once, whatever its case: a later layer's value (and spelling)
    wins. A callback is sent with these, never two ``Content-Type`` or ``X-Call-Id``."""
    merged: dict[str, tuple[str, str]] = {}
    for layer in layers:
        for name, value in layer.items():
            merged.pop(name.lower(), None)
            merged[name.lower()] = (name, value)
    return dict(merged.values())


@dataclass(frozen=True)
class Delivery:
    status: int
    body: bytes


def post(url: str, body: bytes, headers: dict[str, str], *, allow_hosts: tuple[str, ...],
         timeout: float, max_response_bytes: int) -> Delivery:
    """POST ``body`` to a guarded URL; raises CallbackRefused or httpx errors."""
    # Imported here: httpx costs ~5 MiB and ~70 ms to import, and the API's functions load this
    # module (through posts and comments) only to check a callback URL, never to send one.
    import httpx

    target = resolve(url, allow_hosts)
    parts = urlsplit(url)
    ip = target.address
    netloc_ip = f"[{ip}]" if ":" in ip else ip
    pinned = parts._replace(netloc=f"{netloc_ip}:{target.port}").geturl()
    send_headers = merge_headers({"Host": parts.netloc.rsplit("@", 1)[-1], "Content-Type": "application/json",
                                  "User-Agent": "minitwitter-callbacks/1.0"}, headers)
    extensions = {"sni_hostname": target.host} if parts.scheme == "https" else {}
    with httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False) as client:
        request = client.build_request("POST", pinned, content=body, headers=send_headers,
                                       extensions=extensions)
        response = client.send(request, stream=True)
        try:
            received = bytearray()
            for chunk in response.iter_bytes():
                received.extend(chunk)
                if len(received) > max_response_bytes:
                    break
            return Delivery(status=response.status_code, body=bytes(received[:max_response_bytes]))
        finally:
            response.close()
