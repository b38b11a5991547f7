"""POST /callbacks/exotel fuzzed with a valid token, so every request reaches the parser.

The OpenAPI fuzz cannot forge callback tokens (hundreds of requests, none got past the
check). Here the tokens are real: one call is placed, and hypothesis posts Exotel-shaped
callbacks, good and hostile, to its StatusCallback URL. No answer may be a server error;
the applier (in the background) must process every stored callback; and the call must
stay readable, alone and in the list, and keep the first terminal status it was given,
whatever was posted (issue 11, items 1, 7, 12 and 21).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field

import httpx
import pytest
import respx
from hypothesis import HealthCheck, given, settings

from app.calls.apply import is_terminal
from app.main import create_app
from tests.conftest import EXOTEL_CALLS, WRITER_KEY, AppliedFirst, make_settings
from tests.exotel_callbacks import place_calls
from tests.exotel_wire import EXOTEL_WIRE
from tests.fuzz.exotel_strategies import SID, callback_bodies

# What a callback may be answered: stored (200), or refused for a reason the sender can
# see (unreadable, another call's Sid, not one of Exotel's media types, no CallSid).
CLEAR_ANSWERS = {200, 202, 400, 403, 415, 422}


@dataclass(frozen=True)
class Endpoint:
    """The app on an event loop of its own (hypothesis runs examples synchronously)."""

    loop: asyncio.AbstractEventLoop
    client: httpx.AsyncClient
    callback_url: str
    call_id: str
    # The call's first terminal status, once it has one: it must stand.
    finished_as: list[str] = field(default_factory=list)

    def run(self, coroutine: object) -> httpx.Response:
        return self.loop.run_until_complete(coroutine)  # type: ignore[arg-type]


@pytest.fixture
def endpoint(database_url: str) -> Iterator[Endpoint]:
    loop = asyncio.new_event_loop()
    stack = AsyncExitStack()

    async def start() -> Endpoint:
        app = create_app(make_settings(database_url))
        await stack.enter_async_context(app.router.lifespan_context(app))
        client = await stack.enter_async_context(
            httpx.AsyncClient(
                # Reads wait until the applier has processed every stored callback: a
                # callback it cannot process fails the test with a timeout.
                transport=AppliedFirst(app),
                base_url="http://callbridge.test",
                headers={"Authorization": f"Bearer {WRITER_KEY}"},
            )
        )
        with respx.mock(
            using=EXOTEL_WIRE, base_url=EXOTEL_CALLS, assert_all_called=False
        ) as exotel:
            [(call, url)] = await place_calls(client, exotel, SID)
        return Endpoint(loop, client, url, call["id"])

    try:
        yield loop.run_until_complete(start())
    finally:
        loop.run_until_complete(stack.aclose())
        loop.close()


@given(body_and_type=callback_bodies())
@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)
def test_no_callback_is_a_server_error_and_the_call_stays_readable(
    endpoint: Endpoint, body_and_type: tuple[bytes, str]
) -> None:
    body, content_type = body_and_type
    answer = endpoint.run(
        endpoint.client.post(
            endpoint.callback_url, content=body, headers={"content-type": content_type}
        )
    )
    assert answer.status_code in CLEAR_ANSWERS, answer.text
    if answer.status_code >= 400:
        assert answer.headers["content-type"] == "application/problem+json"

    for path in (f"/calls/{endpoint.call_id}/events", "/calls"):
        assert endpoint.run(endpoint.client.get(path)).status_code == 200
    read = endpoint.run(endpoint.client.get(f"/calls/{endpoint.call_id}"))
    assert read.status_code == 200
    status = read.json()["status"]
    if endpoint.finished_as:
        assert status == endpoint.finished_as[0]
    elif is_terminal(status):
        endpoint.finished_as.append(status)
