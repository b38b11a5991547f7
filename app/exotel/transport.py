"""The wire under the Exotel client: httpx's API over aiohttp's connections.

The client stays an httpx.AsyncClient (requests, auth, redirects, timeouts, and respx at
the tests' HTTP boundary); this transport sends its requests through one aiohttp session.
httpx's own transport (httpcore on anyio) is pure Python, and scans each of its pool's
connections with a system call on every request: it cost more CPU than everything else
in placing a call, and more the more requests were in flight (bench/README.md).

Errors keep the one distinction the Exotel client lives by: did the request surely not
reach Exotel? Only a connection that could not be made (refused, unreachable, DNS, TLS
handshake) or not had in time becomes httpx's ConnectError or ConnectTimeout; anything
once the request may have left (a reset, the server hanging up, a read timeout, an
answer that is not HTTP) becomes an error that means "outcome unknown". The
httpx-aiohttp package maps a server hanging up after the request was sent to
ConnectTimeout, which would count a call that may be ringing as never placed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator

import aiohttp
import httpx
from aiohttp.connector import NEEDS_CLEANUP_CLOSED

# Failed connection attempts are retried (nothing was sent): at once, then after half a
# second, as httpx's own transport does with `retries=2`.
CONNECT_RETRY_DELAYS_S = (0.0, 0.5)
# An idle connection is closed after this long, as httpx's default pool does: servers
# close theirs after a few seconds too (uvicorn after 5), and a request sent on a
# connection the server is just closing fails with its outcome unknown.
KEEPALIVE_S = 5.0


@contextlib.contextmanager
def _as_httpx_errors() -> Iterator[None]:
    """aiohttp's errors as httpx's, by whether the request may have reached the server."""
    try:
        yield
    except aiohttp.ConnectionTimeoutError as exc:
        # No connection free in time, or none made in time: nothing was sent.
        raise httpx.ConnectTimeout(str(exc)) from exc
    except aiohttp.ClientConnectorError as exc:
        raise httpx.ConnectError(str(exc)) from exc
    except TimeoutError as exc:
        # aiohttp's read timeouts are TimeoutErrors (its connect timeout is caught above).
        raise httpx.ReadTimeout(str(exc)) from exc
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientResponseError) as exc:
        # Hung up, or answered something that is not HTTP.
        raise httpx.RemoteProtocolError(str(exc)) from exc
    except (aiohttp.ClientError, OSError) as exc:
        # A reset or a broken body, with the connection made: the request may have left.
        raise httpx.ReadError(str(exc)) from exc


class _ResponseBody(httpx.AsyncByteStream):
    """An aiohttp response's body as received (not decoded: httpx decodes it)."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _as_httpx_errors():
            async for chunk in self._response.content.iter_any():
                yield chunk

    async def aclose(self) -> None:
        # Back to the pool if the body was read to its end; closed otherwise.
        self._response.release()


class AiohttpTransport(httpx.AsyncBaseTransport):
    """Sends httpx requests over one aiohttp session: at most `max_connections` at once,
    every idle one kept for the next request."""

    def __init__(self, *, max_connections: int) -> None:
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    def _opened(self) -> aiohttp.ClientSession:
        # Made on first use, inside the event loop that will use it.
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=self._max_connections,
                    keepalive_timeout=KEEPALIVE_S,
                    # The certificates httpx verifies against (certifi's).
                    ssl=httpx.create_ssl_context(),
                    # asyncio leaks a TLS connection whose server does not close it cleanly
                    # before CPython 3.12.8 (and in 3.13.0): aiohttp then closes it itself.
                    enable_cleanup_closed=NEEDS_CLEANUP_CLOSED,
                ),
                # httpx keeps the cookies, redirects and decoding; aiohttp only carries bytes.
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=False,
            )
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeout = request.extensions.get("timeout", {})
        body = await request.aread()
        for retry_delay_s in (*CONNECT_RETRY_DELAYS_S, None):
            try:
                with _as_httpx_errors():
                    response = await self._opened().request(
                        request.method,
                        str(request.url),
                        headers=request.headers.multi_items(),
                        data=body or None,
                        allow_redirects=False,
                        timeout=aiohttp.ClientTimeout(
                            total=None,
                            connect=timeout.get("pool"),
                            sock_connect=timeout.get("connect"),
                            sock_read=timeout.get("read"),
                        ),
                    )
                break
            except httpx.ConnectError:
                if retry_delay_s is None:
                    raise
                await asyncio.sleep(retry_delay_s)
        return httpx.Response(
            response.status,
            headers=response.raw_headers,
            stream=_ResponseBody(response),
            request=request,
            extensions={
                "http_version": b"HTTP/1.1",
                "reason_phrase": (response.reason or "").encode(),
            },
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
