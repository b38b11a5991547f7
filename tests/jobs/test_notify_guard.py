"""Delivery to notify_url: only to public addresses (checked after DNS), reading little.

Issue 11, items 3 (the delivery side) and 4. Every connection here stays on loopback:
public addresses appear only in resolver answers that the guard refuses, or that a
recording backend receives instead of a network.
"""

from __future__ import annotations

import asyncio
import resource
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any

import httpcore
import httpx
import pytest
import respx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from app.notify_targets import PublicOnlyBackend, PublicOnlyTransport, RefusedAddress
from tests.jobs.conftest import AppFactory, Receiver, eventually, serving
from tests.jobs.test_relay import FINISHED, apply, notify_state, place


async def test_without_the_allow_list_a_loopback_receiver_is_refused_at_delivery(
    start_app: AppFactory, exotel: respx.MockRouter, receiver: Receiver
) -> None:
    # Placed while 127.0.0.1 was allowed; delivered by a process where it is not (as if
    # the allow-list had changed in between).
    placing = await start_app(run_jobs=False)
    call_id = await place(placing, exotel, receiver.url)
    relaying = await start_app(notify_allowed_hosts="")

    await apply(relaying, call_id, FINISHED)

    async def failed() -> bool:
        # A claim counts the attempt before its outcome is recorded: wait for the outcome.
        return (await notify_state(relaying, call_id) or {}).get("last_error") is not None

    await eventually(failed)
    state = await notify_state(relaying, call_id)
    assert state is not None
    assert state["last_error"] == "refused: private address"
    assert receiver.deliveries == []


def resolving(answers: dict[str, list[str]], asked: list[str] | None = None) -> Any:
    async def resolve(host: str, port: int) -> list[str]:
        if asked is not None:
            asked.append(host)
        return answers[host]

    return resolve


@pytest.mark.parametrize(
    "addresses",
    [
        ["127.0.0.1"],
        ["::1"],
        ["::ffff:127.0.0.1"],
        ["169.254.169.254"],
        ["10.1.2.3"],
        ["0.0.0.0"],  # noqa: S104 (an address refused, not one bound to)
        # One refused address among public ones is enough: which one would connect is
        # up to the order of the answer.
        ["93.184.215.14", "127.0.0.1"],
    ],
)
async def test_a_name_resolving_to_an_internal_address_is_refused(
    receiver: Receiver, addresses: list[str]
) -> None:
    port = httpx.URL(receiver.url).port
    transport = PublicOnlyTransport(frozenset(), resolving({"hooks.rebinding.test": addresses}))
    async with httpx.AsyncClient(transport=transport) as http:
        with pytest.raises(RefusedAddress):
            await http.post(f"http://hooks.rebinding.test:{port}/hooks", content=b"{}")
    assert receiver.deliveries == []


async def test_ip_literals_in_any_spelling_are_checked_after_resolution(
    receiver: Receiver,
) -> None:
    port = httpx.URL(receiver.url).port
    async with httpx.AsyncClient(transport=PublicOnlyTransport(frozenset())) as http:
        for host in ("127.0.0.1", "2130706433", "0x7f000001", "127.1", "localhost"):
            with pytest.raises(RefusedAddress):
                await http.post(f"http://{host}:{port}/hooks", content=b"{}")
    assert receiver.deliveries == []


async def test_an_allowed_host_is_reached(receiver: Receiver) -> None:
    transport = PublicOnlyTransport(frozenset({"127.0.0.1"}))
    async with httpx.AsyncClient(transport=transport) as http:
        response = await http.post(receiver.url, content=b"{}")
    assert response.status_code == 204
    assert len(receiver.deliveries) == 1


class RecordingBackend(httpcore.AsyncNetworkBackend):
    """Records where it was asked to connect, and connects nowhere."""

    def __init__(self) -> None:
        self.connected_to: list[str] = []

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        self.connected_to.append(host)
        raise httpcore.ConnectError("not in tests")


async def test_the_vetted_address_is_the_one_connected_to() -> None:
    # A rebinding DNS server answers a public address to the check and 127.0.0.1 to the
    # connect: the guard must connect to what it checked, without a second lookup.
    answers = iter([["93.184.215.14"], ["127.0.0.1"]])
    asked: list[str] = []

    async def rebinding(host: str, port: int) -> list[str]:
        asked.append(host)
        return next(answers)

    recording = RecordingBackend()
    backend = PublicOnlyBackend(frozenset(), rebinding, backend=recording)

    with pytest.raises(httpcore.ConnectError):
        await backend.connect_tcp("hooks.rebinding.test", 443)

    assert asked == ["hooks.rebinding.test"]
    assert recording.connected_to == ["93.184.215.14"]


async def test_allowed_hosts_are_connected_to_by_name_without_a_check() -> None:
    recording = RecordingBackend()
    backend = PublicOnlyBackend(frozenset({"hooks.internal"}), resolving({}), backend=recording)
    with pytest.raises(httpcore.ConnectError):
        await backend.connect_tcp("HOOKS.internal", 443)
    assert recording.connected_to == ["HOOKS.internal"]


# -- Bounded answers ------------------------------------------------------------------

CHUNK = b"x" * 65536


# As good as endless: the old relay read it all (and held it) before it saw the status.
ANSWER_BYTES = 2**30


class EndlessReceiver:
    """Answers 200 with a GiB, counting what it managed to send."""

    def __init__(self) -> None:
        self.sent = 0
        self.requests = 0

    async def endpoint(self, request: Request) -> Response:
        self.requests += 1
        await request.body()

        async def endless() -> AsyncIterator[bytes]:
            while self.sent < ANSWER_BYTES and not await request.is_disconnected():
                self.sent += len(CHUNK)
                yield CHUNK
                # uvicorn may drop what is sent after the client left without a word.
                await asyncio.sleep(0)

        return StreamingResponse(endless(), status_code=200)


@pytest.fixture
async def endless() -> AsyncIterator[tuple[EndlessReceiver, str]]:
    receiver = EndlessReceiver()
    app = Starlette(routes=[Route("/hooks", receiver.endpoint, methods=["POST"])])
    async with serving(app) as url:
        yield receiver, f"{url}/hooks"


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def test_an_endless_answer_is_cut_short(
    start_app: AppFactory, exotel: respx.MockRouter, endless: tuple[EndlessReceiver, str]
) -> None:
    receiver, url = endless
    running = await start_app(notify_timeout_s=5.0)
    call_id = await place(running, exotel, url)
    rss_before = peak_rss_mib()
    started = time.monotonic()

    await apply(running, call_id, FINISHED)

    async def delivered() -> bool:
        return (await notify_state(running, call_id) or {}).get("status") == "delivered"

    await eventually(delivered)
    assert time.monotonic() - started < 4.0  # well inside the attempt's time limit
    await asyncio.sleep(0.2)  # what the receiver still sends, it sends into a closed socket
    # The receiver got some MiB into socket buffers before the relay closed; never more.
    assert receiver.sent < 16 * 2**20
    assert receiver.requests == 1
    assert peak_rss_mib() - rss_before < 64
