"""The Exotel client waits for a place under the fleet's limit before every request: a
connect request for the place its call's statement reserved, lookups for one of their own."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import httpx
import pytest
import respx

from app.exotel.client import ConnectRequest, ExotelClient, ExotelRateLimited
from app.limits.budget import LimitReached
from tests.conftest import EXOTEL_ACCOUNT, EXOTEL_BASE, EXOTEL_CALLS
from tests.exotel_samples import connect_answer
from tests.limiters import Unlimited

REQUEST = ConnectRequest(
    from_number="+919876543210",
    to_number="+919123456789",
    caller_id="+918047112233",
    status_callback="http://callbridge.test/callbacks/exotel?token=t",
)


class Full:
    """A limiter with no place for anyone within the time a caller may wait."""

    async def acquire(self) -> None:
        raise LimitReached(retry_after_s=7)


async def no_place() -> None:
    raise LimitReached(retry_after_s=7)


@pytest.mark.parametrize("operation", ["connect", "call_details"])
async def test_a_request_over_the_limit_is_not_sent_and_says_when_to_retry(
    operation: str,
) -> None:
    async with (
        httpx.AsyncClient(base_url=EXOTEL_BASE) as http,
        respx.mock(assert_all_called=False) as exotel,
    ):
        connect = exotel.post(f"{EXOTEL_CALLS}/connect.json").respond(
            200, json=connect_answer("a" * 32)
        )
        details = exotel.get(f"{EXOTEL_CALLS}/{'a' * 32}.json").respond(
            200, json=connect_answer("a" * 32)
        )
        client = ExotelClient(http, account_sid=EXOTEL_ACCOUNT, limiter=Full())

        asking = (
            client.connect(REQUEST, no_place())
            if operation == "connect"
            else client.call_details("a" * 32)
        )
        with pytest.raises(ExotelRateLimited) as refused:
            await asking

    assert connect.call_count == details.call_count == 0
    assert refused.value.retry_after_s == 7


async def test_placing_takes_the_place_it_was_given_and_lookups_ask_the_limiter() -> None:
    sid = "a" * 32
    limiter = Unlimited()
    async with httpx.AsyncClient(base_url=EXOTEL_BASE) as http, respx.mock() as exotel:
        exotel.post(f"{EXOTEL_CALLS}/connect.json").respond(200, json=connect_answer(sid))
        exotel.get(f"{EXOTEL_CALLS}/{sid}.json").respond(200, json=connect_answer(sid))
        exotel.get(f"{EXOTEL_CALLS}.json").respond(200, json={"Metadata": {}, "Calls": []})
        client = ExotelClient(http, account_sid=EXOTEL_ACCOUNT, limiter=limiter)

        await client.connect(REQUEST, asyncio.sleep(0))
        await client.call_details(sid)
        now = datetime.now(UTC)
        await client.find_calls(to_number=REQUEST.to_number, created_after=now, created_before=now)

    # The two lookups; the connect request went with the place it was given.
    assert limiter.asked == 2
