"""The Exotel client's transport against real loopback servers that misbehave: what each
failure means for a call (not placed, or outcome unknown), and what it sends and keeps."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from app.exotel.client import (
    ConnectRequest,
    ExotelClient,
    ExotelOutcomeUnknown,
    ExotelUnavailable,
    build_http_client,
)
from app.exotel.transport import AiohttpTransport
from tests.conftest import EXOTEL_ACCOUNT
from tests.exotel_samples import connect_answer
from tests.limiters import Unlimited

REQUEST = ConnectRequest(
    from_number="+919876543210",
    to_number="+919123456789",
    caller_id="+918047112233",
    status_callback="http://callbridge.test/callbacks/exotel?token=t",
)
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def exotel_serving(handle: Handler) -> AsyncIterator[str]:
    """A bare TCP server on 127.0.0.1 running `handle` for each connection; its base URL.
    On the way out, connections still being handled are cut, and every one is closed."""
    handling: set[asyncio.Task[None]] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handling.add(task)
        try:
            await handle(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        for task in handling:
            task.cancel()
        await asyncio.gather(*handling, return_exceptions=True)
        await server.wait_closed()


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """The request's head and body (Content-Length bytes)."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return head + await reader.readexactly(length)


def answer(status: int, body: bytes, *headers: bytes) -> bytes:
    lines = [b"HTTP/1.1 %d X" % status, b"Content-Length: %d" % len(body), *headers]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


async def connect(base_url: str, *, timeout_s: float = 5) -> None:
    async with build_http_client(
        base_url, api_key="key", api_token="token", timeout_s=timeout_s
    ) as http:
        exotel = ExotelClient(http, account_sid=EXOTEL_ACCOUNT, limiter=Unlimited())
        await exotel.connect(REQUEST, asyncio.sleep(0))


async def test_a_connect_request_goes_out_as_exotel_expects_and_its_answer_is_read() -> None:
    received: list[bytes] = []

    async def exotel(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.append(await read_request(reader))
        body = gzip.compress(json.dumps(connect_answer("a" * 32)).encode())
        writer.write(
            answer(200, body, b"Content-Encoding: gzip", b"Content-Type: application/json")
        )
        await writer.drain()
        writer.close()

    async with exotel_serving(exotel) as url:
        await connect(url)

    [request] = received
    head, _, body = request.partition(b"\r\n\r\n")
    assert head.startswith(b"POST /v1/Accounts/callbridge-test/Calls/connect.json HTTP/1.1")
    headers = {
        name.strip().lower(): value.strip()
        for name, _, value in (line.partition(b":") for line in head.split(b"\r\n")[1:])
    }
    assert headers[b"authorization"] == b"Basic a2V5OnRva2Vu"  # key:token
    assert headers[b"content-type"] == b"application/x-www-form-urlencoded"
    assert headers[b"user-agent"] == b"callbridge"
    assert b"From=%2B919876543210" in body
    assert b"cookie" not in headers


async def test_a_server_that_hangs_up_after_the_request_leaves_the_outcome_unknown() -> None:
    """The request reached Exotel: the call may be ringing, so it must never count as not
    placed (which would free the Idempotency-Key for a second call)."""
    received: list[bytes] = []

    async def exotel(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.append(await read_request(reader))
        writer.close()

    async with exotel_serving(exotel) as url:
        with pytest.raises(ExotelOutcomeUnknown):
            await connect(url)
    assert len(received) == 1  # sent once, never again


@pytest.mark.parametrize(
    "reply",
    [b"", b"not HTTP at all\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"],
    ids=["reset", "garbage", "cut-short"],
)
async def test_a_broken_answer_leaves_the_outcome_unknown(reply: bytes) -> None:
    async def exotel(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        if reply:
            writer.write(reply)
            await writer.drain()
        else:  # reset, not a clean close
            sock = writer.get_extra_info("socket")
            sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
            )
        writer.close()

    async with exotel_serving(exotel) as url:
        with pytest.raises(ExotelOutcomeUnknown):
            await connect(url)


async def test_no_answer_in_time_leaves_the_outcome_unknown() -> None:
    async def exotel(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(5)

    async with exotel_serving(exotel) as url:
        with pytest.raises(ExotelOutcomeUnknown):
            await connect(url, timeout_s=0.2)


async def test_nothing_listening_means_not_placed() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    with pytest.raises(ExotelUnavailable):
        await connect(f"http://127.0.0.1:{port}")


async def test_a_failed_connection_is_tried_again() -> None:
    """Nothing was sent, so trying again is safe: a server that starts listening within
    the retries gets the request, once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    received: list[bytes] = []

    async def exotel(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.append(await read_request(reader))
        writer.write(answer(200, json.dumps(connect_answer("a" * 32)).encode()))
        await writer.drain()
        writer.close()

    async def listen_soon() -> asyncio.Server:
        await asyncio.sleep(0.2)
        return await asyncio.start_server(exotel, "127.0.0.1", port)

    starting = asyncio.create_task(listen_soon())
    try:
        await connect(f"http://127.0.0.1:{port}")
    finally:
        server = await starting
        server.close()
        await server.wait_closed()
    assert len(received) == 1


async def test_no_connection_free_in_time_means_not_sent() -> None:
    """At most max_connections requests are in flight; one that waits past the pool
    timeout for a connection was never sent."""
    release = asyncio.Event()
    received = asyncio.Event()
    requests = 0

    async def exotel(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal requests
        await read_request(reader)
        requests += 1
        received.set()
        await release.wait()
        writer.write(answer(200, b"{}"))
        await writer.drain()
        writer.close()

    async with (
        exotel_serving(exotel) as url,
        httpx.AsyncClient(
            base_url=url,
            transport=AiohttpTransport(max_connections=1),
            timeout=httpx.Timeout(5, pool=0.2),
        ) as http,
    ):
        first = asyncio.create_task(http.get("/"))
        await received.wait()
        with pytest.raises(httpx.ConnectTimeout):
            await http.get("/")
        release.set()
        assert (await first).status_code == 200
    assert requests == 1


async def test_a_body_is_passed_on_as_it_arrives_and_decoded_by_httpx() -> None:
    compressed = gzip.compress(b"x" * 10_000)

    async def exotel(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answer(200, compressed, b"Content-Encoding: gzip")[: -len(compressed) + 10])
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.write(compressed[10:])
        await writer.drain()
        writer.close()

    async with (
        exotel_serving(exotel) as url,
        build_http_client(url, api_key="k", api_token="t", timeout_s=5) as http,
    ):
        async with http.stream("GET", "/") as response:
            raw = b"".join([chunk async for chunk in response.aiter_raw()])
        assert raw == compressed  # as sent: Range requests for recordings need the raw bytes
        assert (await http.get("/")).content == b"x" * 10_000
