"""The outbound limit to Exotel refuses a burst it cannot send soon, instead of queueing it."""

from __future__ import annotations

import httpx
import pytest
import respx
from aiolimiter import AsyncLimiter

from app.exotel.client import ConnectRequest, ExotelClient, ExotelRateLimited
from tests.conftest import EXOTEL_ACCOUNT, EXOTEL_BASE, EXOTEL_CALLS
from tests.exotel_samples import connect_answer

REQUEST = ConnectRequest(
    from_number="+919876543210",
    to_number="+919123456789",
    caller_id="+918047112233",
    status_callback="http://callbridge.test/callbacks/exotel?token=t",
)


async def test_a_request_over_the_limit_is_not_sent_and_says_when_to_retry() -> None:
    async with httpx.AsyncClient(base_url=EXOTEL_BASE) as http, respx.mock() as exotel:
        route = exotel.post(f"{EXOTEL_CALLS}/connect.json").respond(
            200, json=connect_answer("a" * 32)
        )
        client = ExotelClient(
            http, account_sid=EXOTEL_ACCOUNT, limiter=AsyncLimiter(2, 60), max_queue_s=0.2
        )

        await client.connect(REQUEST)
        await client.connect(REQUEST)
        with pytest.raises(ExotelRateLimited) as refused:
            await client.connect(REQUEST)

    assert route.call_count == 2
    assert refused.value.retry_after_s == 30
