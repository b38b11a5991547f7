"""Where a notify_url may point: public addresses only, unless NOTIFY_ALLOWED_HOSTS names the host.

Otherwise anyone allowed to place a call could make Callbridge POST to its own network
(the database's port, a cloud metadata service at 169.254.169.254) and read the outcome
in `notify.last_error`. The target is checked twice:

- At POST /calls, on the URL as written (`notify_url_refusal`): an IP literal of a
  loopback, private, link-local, multicast, reserved or unspecified address, or a
  `localhost` name, is refused with 422. Names are not looked up there: what a name
  resolves to can change before the call ends.
- At delivery, on the addresses the name resolves to then (`PublicOnlyBackend`, the
  network backend of the relay's HTTP client): each new connection resolves the host,
  is refused if any of its addresses is not public, and is opened to the vetted address
  itself, so there is no second lookup between check and connect for a rebinding DNS
  server to answer differently. TLS still verifies the certificate against the name:
  httpcore passes the URL's host, not the address, as the server name.

A host named in NOTIFY_ALLOWED_HOSTS, spelled exactly as in the URL, skips both checks
(a receiver inside the network, or 127.0.0.1 in tests); another spelling of the same
address (`2130706433`, `localhost` for 127.0.0.1) is checked like any other host.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable

import anyio
import httpcore
import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# host, port -> the addresses to connect to, in order.
Resolver = Callable[[str, int], Awaitable[list[str]]]
# NAT64 (RFC 6052) embeds an IPv4 address in the last 32 bits of an IPv6 one.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


class RefusedAddress(Exception):
    """The notify_url's host resolved to an address it may not reach."""


def refusal_reason(address: IPAddress) -> str | None:
    """Why a connection to `address` is refused (`loopback`, `private`...), None if public."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is None and address.teredo is not None:
            embedded = address.teredo[1]
        if embedded is not None:
            return refusal_reason(embedded)
    for reason, refused in (
        ("unspecified", address.is_unspecified),
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("private", address.is_private),
        ("reserved", address.is_reserved),
        # Shared (carrier NAT), documentation and benchmarking ranges, and the like.
        ("non-public", not address.is_global),
    ):
        if refused:
            return reason
    return None


def literal_address(host: str) -> IPAddress | None:
    """The address a host names without a lookup (`127.0.0.1`, `::1`), else None."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _names_this_machine(host: str) -> bool:
    name = host.rstrip(".")
    return name == "localhost" or name.endswith(".localhost")


def notify_url_refusal(host: str, allowed_hosts: frozenset[str]) -> str | None:
    """Why POST /calls refuses a notify_url with this host, or None.

    `host` is the URL's host as pydantic normalises it (lowercase, IPv6 in brackets).
    """
    host = host.lower().removeprefix("[").removesuffix("]")
    if host in allowed_hosts:
        return None
    if _names_this_machine(host):
        return "must not point to this machine (localhost needs NOTIFY_ALLOWED_HOSTS)"
    address = literal_address(host)
    if address is not None:
        reason = refusal_reason(address)
        if reason is not None:
            return f"must be a public address ({reason} ones need NOTIFY_ALLOWED_HOSTS)"
    return None


async def resolve(host: str, port: int) -> list[str]:
    """The host's addresses, from the system resolver."""
    found = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(sockaddr[0]) for *_, sockaddr in found))


class PublicOnlyBackend(httpcore.AsyncNetworkBackend):
    """Opens connections only to public addresses, or to hosts that are allowed by name."""

    def __init__(
        self,
        allowed_hosts: frozenset[str],
        resolver: Resolver = resolve,
        backend: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        self._allowed_hosts = allowed_hosts
        self._resolve = resolver
        self._backend = backend or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        if host.lower() in self._allowed_hosts:
            return await self._backend.connect_tcp(
                host, port, timeout, local_address, socket_options
            )
        try:
            with anyio.fail_after(timeout):
                addresses = await self._resolve(host, port)
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout("resolving the host timed out") from exc
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve the host: {exc}") from exc
        vetted = [literal_address(address) for address in addresses]
        if not vetted or any(a is None or refusal_reason(a) is not None for a in vetted):
            raise RefusedAddress(f"{host} resolves to an address that is not public")
        error: Exception | None = None
        for address in addresses:
            try:
                return await self._backend.connect_tcp(
                    address, port, timeout, local_address, socket_options
                )
            except httpcore.ConnectError as exc:
                error = exc
        assert error is not None
        raise error

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise RefusedAddress("notifications go over TCP only")

    async def sleep(self, seconds: float) -> None:
        await self._backend.sleep(seconds)


class PublicOnlyTransport(httpx.AsyncHTTPTransport):
    """httpx's transport over a PublicOnlyBackend.

    httpx does not take a network backend, so the connection pool it builds is replaced
    by one that uses ours (with the same TLS defaults; no proxies: a proxy would connect
    to the target itself, beyond this check).
    """

    def __init__(self, allowed_hosts: frozenset[str], resolver: Resolver = resolve) -> None:
        super().__init__()
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            network_backend=PublicOnlyBackend(allowed_hosts, resolver),
        )
