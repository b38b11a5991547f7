"""GET /calls/{ref}/recording: a dashboard plays a recording that needs Exotel's
credentials, without holding them (issue 10, item 7)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import respx

from app.errors import PROBLEM_CONTENT_TYPE
from tests.conftest import READER_KEY
from tests.exotel_callbacks import SAMPLE_SID, callback, place_calls
from tests.exotel_wire import EXOTEL_WIRE

RECORDING = "https://recordings.exotel.com/exotelrecordings/callbridge-test/rec.mp3"
AUDIO = bytes(range(256)) * 8
READER = {"Authorization": f"Bearer {READER_KEY}"}


@pytest.fixture
def recordings() -> Iterator[respx.MockRouter]:
    """Exotel's recording host, answering Range requests for AUDIO to its account only."""

    def answer(request: httpx.Request) -> httpx.Response:
        if not request.headers.get("authorization", "").startswith("Basic "):
            return httpx.Response(401)
        asked = request.headers.get("range")
        if asked is None:
            return httpx.Response(200, content=AUDIO, headers={"content-type": "audio/mpeg"})
        first, _, last = asked.removeprefix("bytes=").partition("-")
        start, end = int(first), int(last or len(AUDIO) - 1)
        if start >= len(AUDIO):
            return httpx.Response(416, headers={"content-range": f"bytes */{len(AUDIO)}"})
        return httpx.Response(
            206,
            content=AUDIO[start : end + 1],
            headers={
                "content-type": "audio/mpeg",
                "content-range": f"bytes {start}-{end}/{len(AUDIO)}",
            },
        )

    with respx.mock(using=EXOTEL_WIRE, assert_all_called=False) as router:
        router.get(RECORDING).mock(side_effect=answer)
        yield router


async def recorded_call(
    client: httpx.AsyncClient, exotel: respx.MockRouter, recording_url: str | None
) -> str:
    [(_, callback_url)] = await place_calls(client, exotel, SAMPLE_SID)
    body = callback(RecordingUrl=recording_url, Status="completed")
    assert (await client.post(callback_url, json=body)).status_code == 200
    return SAMPLE_SID


async def test_a_reader_plays_and_seeks_a_recording_streamed_with_callbridges_credentials(
    client: httpx.AsyncClient, exotel: respx.MockRouter, recordings: respx.MockRouter
) -> None:
    sid = await recorded_call(client, exotel, RECORDING)

    whole = await client.get(f"/calls/{sid}/recording", headers=READER)
    part = await client.get(f"/calls/{sid}/recording", headers={**READER, "Range": "bytes=100-199"})

    assert whole.status_code == 200
    assert whole.content == AUDIO
    assert whole.headers["content-type"] == "audio/mpeg"
    assert whole.headers["accept-ranges"] == "bytes"
    assert part.status_code == 206
    assert part.content == AUDIO[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{len(AUDIO)}"
    # The dashboard never sees Exotel's credentials; Exotel got Callbridge's.
    assert "authorization" not in {name.lower() for name in whole.headers}


async def test_a_range_past_the_end_is_a_416_problem(
    client: httpx.AsyncClient, exotel: respx.MockRouter, recordings: respx.MockRouter
) -> None:
    sid = await recorded_call(client, exotel, RECORDING)

    response = await client.get(
        f"/calls/{sid}/recording", headers={**READER, "Range": f"bytes={len(AUDIO)}-"}
    )

    assert response.status_code == 416
    assert response.headers["content-type"] == PROBLEM_CONTENT_TYPE
    assert response.headers["content-range"] == f"bytes */{len(AUDIO)}"


@pytest.mark.parametrize("recording_url", [None, "https://elsewhere.example/rec.mp3"])
async def test_a_call_without_a_recording_at_exotel_is_a_404_problem(
    client: httpx.AsyncClient, exotel: respx.MockRouter, recording_url: str | None
) -> None:
    sid = await recorded_call(client, exotel, recording_url)

    response = await client.get(f"/calls/{sid}/recording", headers=READER)

    assert response.status_code == 404
    assert response.headers["content-type"] == PROBLEM_CONTENT_TYPE
    assert response.json()["type"].endswith("/recording-not-found")


async def test_an_unknown_call_or_no_key_is_refused(client: httpx.AsyncClient) -> None:
    unknown = await client.get("/calls/no-such-call/recording", headers=READER)
    anonymous = await client.get("/calls/no-such-call/recording", headers={"Authorization": ""})

    assert unknown.status_code == 404
    assert unknown.json()["type"].endswith("/call-not-found")
    assert anonymous.status_code == 401
