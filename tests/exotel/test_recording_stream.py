"""A recording passes through Callbridge as it comes: Range kept, never held whole, and
only from Exotel's own locations (app/calls/recording.py, served over a real socket)."""

from __future__ import annotations

import asyncio
import io
import wave
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
import respx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app.calls.recording import stream_recording
from app.errors import Problem
from app.exotel.client import ExotelClient, build_http_client
from app.exotel.simulator import Simulator
from tests.exotel_wire import EXOTEL_WIRE
from tests.jobs.conftest import serving
from tests.limiters import Unlimited
from tests.simulator.conftest import FAST, connect, wait_until_ended


def recording_app(exotel: ExotelClient) -> Starlette:
    """The endpoint as the router will have it: the URL comes from the stored call."""

    async def endpoint(request: Request) -> Response:
        try:
            return await stream_recording(
                exotel, request.query_params.get("url"), request.headers.get("range")
            )
        except Problem as problem:
            return JSONResponse(problem.body(), status_code=problem.status)

    return Starlette(routes=[Route("/recording", endpoint)])


@asynccontextmanager
async def callbridge(exotel: ExotelClient) -> AsyncIterator[httpx.AsyncClient]:
    async with serving(recording_app(exotel)) as url, httpx.AsyncClient(base_url=url) as http:
        yield http


@pytest.fixture
async def simulator() -> AsyncIterator[Simulator]:
    simulator = Simulator(
        FAST, callback_transport=httpx.MockTransport(lambda _: httpx.Response(200))
    )
    yield simulator
    await simulator.aclose()


async def test_a_simulated_recording_plays_and_seeks(simulator: Simulator) -> None:
    config = simulator.config
    async with serving(simulator.app) as simulator_url:
        http = build_http_client(
            simulator_url, api_key=config.api_key, api_token=config.api_token, timeout_s=5
        )
        exotel = ExotelClient(http, account_sid=config.account_sid, limiter=Unlimited())
        async with http, callbridge(exotel) as client:
            sid = await connect(http, Record="true")
            url = (await wait_until_ended(http, sid))["RecordingUrl"]

            whole = await client.get("/recording", params={"url": url})
            part = await client.get(
                "/recording", params={"url": url}, headers={"Range": "bytes=44-143"}
            )

    assert whole.status_code == 200
    assert whole.headers["content-type"] == "audio/wav"
    assert whole.headers["accept-ranges"] == "bytes"
    with wave.open(io.BytesIO(whole.content)) as audio:
        assert audio.getnframes() > 0
    assert part.status_code == 206
    assert part.headers["content-range"] == f"bytes 44-143/{len(whole.content)}"
    assert part.content == whole.content[44:144]


async def test_a_recording_is_passed_on_before_it_has_all_arrived() -> None:
    url = "https://recordings.exotel.com/exotelrecordings/acct/sid.mp3"
    first_chunk_seen = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        yield b"first chunk"
        # The rest comes only once the client has the first: a service that read the
        # whole file before answering would wait here forever.
        await first_chunk_seen.wait()
        yield b"second chunk"

    http = build_http_client("https://api.exotel.com", api_key="k", api_token="t", timeout_s=5)
    exotel = ExotelClient(http, account_sid="acct", limiter=Unlimited())
    with respx.mock(using=EXOTEL_WIRE, assert_all_called=True) as router:
        router.get(url).mock(
            return_value=httpx.Response(
                200, headers={"Content-Type": "audio/mpeg"}, stream=_Stream(body())
            )
        )
        async with http, callbridge(exotel) as client:
            async with asyncio.timeout(5):
                async with client.stream("GET", "/recording", params={"url": url}) as response:
                    chunks = response.aiter_raw()
                    first = await anext(chunks)
                    first_chunk_seen.set()
                    rest = b"".join([chunk async for chunk in chunks])

    assert first + rest == b"first chunksecond chunk"


@pytest.mark.parametrize(
    "url", [None, "", "https://attacker.example/rec.mp3", "http://127.0.0.1:5432/"]
)
async def test_no_recording_or_one_elsewhere_is_a_404_problem(url: str | None) -> None:
    http = build_http_client("https://api.exotel.com", api_key="k", api_token="t", timeout_s=5)
    exotel = ExotelClient(http, account_sid="acct", limiter=Unlimited())
    with respx.mock(using=EXOTEL_WIRE, assert_all_called=False) as router:
        anywhere = router.route().respond(200)
        async with http, callbridge(exotel) as client:
            params = {} if url is None else {"url": url}
            response = await client.get("/recording", params=params)

    assert response.status_code == 404
    assert response.json()["type"].endswith("/recording-not-found")
    assert not anywhere.called


class _Stream(httpx.AsyncByteStream):
    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self._chunks = chunks

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._chunks:
            yield chunk
