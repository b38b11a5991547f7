"""`GET /calls/{ref}/recording`: a call's recording, streamed from Exotel.

Since October 2024 a plain RecordingUrl downloads only with the account's credentials,
which dashboards must not hold: Callbridge fetches it with its own and passes the
bytes through as they come (never a whole file in memory), with `Range` so that an
<audio> element can seek. The URL came in a callback, so it is fetched only from
Exotel's recording locations or the configured Exotel base URL
(`ExotelClient.may_fetch_recording`); any other is answered as "no recording".
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import httpx
import structlog
from starlette.background import BackgroundTask
from starlette.responses import StreamingResponse

from app.errors import Problem
from app.exotel.client import ExotelAuthFailed, ExotelClient, ExotelRefused, ExotelUnavailable

log = structlog.get_logger(__name__)

# What a player needs to know of the bytes that follow; everything else stays upstream.
PASSED_HEADERS = ("content-type", "content-length", "content-range", "etag", "last-modified")


def no_recording() -> Problem:
    return Problem(404, "recording-not-found", "This call has no recording")


async def stream_recording(
    exotel: ExotelClient, recording_url: str | None, range_header: str | None
) -> StreamingResponse:
    """Exotel's answer (200 or 206) passed through; a Problem when there is none, or
    when the range is outside it (416, with the length in `Content-Range`)."""
    if not recording_url or not exotel.may_fetch_recording(recording_url):
        if recording_url:
            log.warning("recording_url_not_exotels", host=httpx.URL(recording_url).host)
        raise no_recording()
    stack = AsyncExitStack()
    try:
        upstream = await stack.enter_async_context(
            exotel.stream_recording(recording_url, range_header)
        )
    except ExotelRefused as exc:
        await stack.aclose()
        if exc.status in (403, 404, 410):
            raise no_recording() from exc
        raise Problem(502, "exotel-error", f"Exotel refused the recording: {exc.message}") from exc
    except (ExotelAuthFailed, ExotelUnavailable) as exc:
        await stack.aclose()
        raise Problem(502, "exotel-error", exc.message) from exc

    if upstream.status_code == 416:
        await stack.aclose()
        raise Problem(
            416,
            "range-not-satisfiable",
            "The range is outside the recording",
            headers={"Content-Range": upstream.headers.get("content-range", "bytes */*")},
        )
    headers = {name: upstream.headers[name] for name in PASSED_HEADERS if name in upstream.headers}
    headers["accept-ranges"] = "bytes"
    # Closed after the last byte, or when the client goes away (the background task runs
    # either way), so the connection to Exotel never outlives the answer.
    return StreamingResponse(
        _relay(upstream, stack),
        status_code=upstream.status_code,
        headers=headers,
        background=BackgroundTask(stack.aclose),
    )


async def _relay(upstream: httpx.Response, stack: AsyncExitStack) -> AsyncIterator[bytes]:
    try:
        async for chunk in upstream.aiter_raw():
            yield chunk
    finally:
        await stack.aclose()
