"""Exotel's 200 requests a minute per account, and recordings behind the account's
credentials, with Range so that an <audio> element can seek."""

from __future__ import annotations

import io
import wave

import httpx
import pytest

from app.exotel.simulator import Simulator, SimulatorConfig
from app.exotel.simulator.routes import SlidingWindowLimit
from tests.simulator.conftest import (
    CALLS,
    CallbackReceiver,
    connect,
    connect_form,
    details,
    wait_until_ended,
)

THREE_A_MINUTE = SimulatorConfig(speed=1000.0, figures_delay_s=5, requests_per_minute=3)


@pytest.mark.parametrize("simulator_config", [THREE_A_MINUTE], indirect=True)
async def test_past_the_limit_every_api_answers_429_like_exotel(exotel: httpx.AsyncClient) -> None:
    sid = await connect(exotel)
    await exotel.get(f"{CALLS}/{sid}.json")
    await exotel.get(f"{CALLS}.json")

    refused = [
        await exotel.post(f"{CALLS}/connect.json", data=connect_form()),
        await exotel.get(f"{CALLS}/{sid}.json"),
        await exotel.get(f"{CALLS}.json"),
    ]

    for response in refused:
        assert response.status_code == 429
        assert response.headers["Retry-After"] == "30"
        assert response.headers["X-RateLimit-Limit"] == "3"
        assert response.headers["X-RateLimit-Remaining"] == "0"
        assert response.json() == {
            "RestException": {
                "Status": 429,
                "Code": "RATE_LIMIT_EXCEEDED",
                "Message": "Rate limit exceeded. Try again in 30 seconds.",
            }
        }


@pytest.mark.parametrize("simulator_config", [THREE_A_MINUTE], indirect=True)
async def test_a_refused_request_places_no_call_and_is_not_counted(
    simulator: Simulator, exotel: httpx.AsyncClient
) -> None:
    for _ in range(3):
        await connect(exotel)

    refused = await exotel.post(f"{CALLS}/connect.json", data=connect_form())

    assert refused.status_code == 429
    assert len(simulator.connect_requests) == 3


def test_the_window_slides(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr("app.exotel.simulator.routes.time.monotonic", lambda: clock[0])
    limit = SlidingWindowLimit(2)

    assert limit.admit("a") == 1
    clock[0] += 30
    assert limit.admit("a") == 0
    assert limit.admit("a") is None  # two within the last 60 s
    assert limit.admit("b") == 1  # per account
    clock[0] += 30.5  # the first has left the window, the second not
    assert limit.admit("a") == 0
    assert limit.admit("a") is None


# Recordings.


async def recorded_call(exotel: httpx.AsyncClient) -> str:
    sid = await connect(exotel, Record="true")
    url: str = (await wait_until_ended(exotel, sid))["RecordingUrl"]
    return url


async def test_a_recording_needs_the_accounts_credentials(
    simulator: Simulator, exotel: httpx.AsyncClient
) -> None:
    url = await recorded_call(exotel)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=simulator.app)) as anonymous:
        response = await anonymous.get(url)

    assert response.status_code == 401


async def test_a_recording_is_a_real_wav(exotel: httpx.AsyncClient) -> None:
    url = await recorded_call(exotel)

    response = await exotel.get(url)

    assert response.status_code == 200
    assert response.headers["content-type"] == "audio/wav"
    assert response.headers["accept-ranges"] == "bytes"
    with wave.open(io.BytesIO(response.content)) as audio:
        assert audio.getnframes() / audio.getframerate() >= 1


@pytest.mark.parametrize(
    ("asked", "first", "last"),
    [("bytes=0-99", 0, 99), ("bytes=100-", 100, None), ("bytes=-10", None, None)],
)
async def test_a_recording_serves_byte_ranges(
    exotel: httpx.AsyncClient, asked: str, first: int | None, last: int | None
) -> None:
    url = await recorded_call(exotel)
    whole = (await exotel.get(url)).content
    size = len(whole)

    response = await exotel.get(url, headers={"Range": asked})

    assert response.status_code == 206
    start = first if first is not None else size - 10
    end = last if last is not None else size - 1
    assert response.headers["content-range"] == f"bytes {start}-{end}/{size}"
    assert response.content == whole[start : end + 1]


async def test_a_range_past_the_end_is_416(exotel: httpx.AsyncClient) -> None:
    url = await recorded_call(exotel)

    response = await exotel.get(url, headers={"Range": "bytes=99999999-"})

    assert response.status_code == 416
    assert response.headers["content-range"].startswith("bytes */")


async def test_a_call_without_recording_has_none_to_serve(
    exotel: httpx.AsyncClient, receiver: CallbackReceiver
) -> None:
    sid = await connect(exotel)  # no Record
    await receiver.wait_for(1)

    assert (await details(exotel, sid))["RecordingUrl"] is None
    assert (await exotel.get(f"/exotelrecordings/callbridge-sim/{sid}.wav")).status_code == 404
