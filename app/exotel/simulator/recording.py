"""The recording every simulated call shares: a real WAV, served with `Range` support.

Since October 2024 Exotel serves a plain RecordingUrl only with the account's
credentials; the simulator's recording route asks for them too (see routes.py).
"""

from __future__ import annotations

import io
import math
import re
import struct
import wave
from functools import cache
from typing import Final

from starlette.responses import Response

SAMPLE_RATE: Final = 8000  # telephone quality, like Exotel's recordings
SECONDS: Final = 2
TONE_HZ: Final = 440
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


@cache
def recording_wav() -> bytes:
    """Two seconds of a quiet 440 Hz tone: 16-bit mono PCM, any player plays it."""
    frames = b"".join(
        struct.pack("<h", int(8000 * math.sin(2 * math.pi * TONE_HZ * index / SAMPLE_RATE)))
        for index in range(SAMPLE_RATE * SECONDS)
    )
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(SAMPLE_RATE)
        writer.writeframes(frames)
    return buffer.getvalue()


class Unsatisfiable(ValueError):
    """A range that starts past the end: 416."""


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The inclusive (first, last) byte a `Range` header asks for; None for the whole
    file (no header, or one we do not serve, such as several ranges)."""
    if header is None:
        return None
    match = _RANGE.fullmatch(header.strip())
    if match is None:
        return None
    first, last = match[1], match[2]
    if not first and not last:
        return None
    if not first:  # the last N bytes
        length = int(last)
        if length == 0:
            raise Unsatisfiable(header)
        return max(size - length, 0), size - 1
    start = int(first)
    if start >= size:
        raise Unsatisfiable(header)
    end = min(int(last), size - 1) if last else size - 1
    if end < start:
        return None
    return start, end


def recording_response(range_header: str | None) -> Response:
    content = recording_wav()
    size = len(content)
    headers = {"Accept-Ranges": "bytes"}
    try:
        wanted = byte_range(range_header, size)
    except Unsatisfiable:
        headers["Content-Range"] = f"bytes */{size}"
        return Response(status_code=416, headers=headers)
    if wanted is None:
        return Response(content, media_type="audio/wav", headers=headers)
    first, last = wanted
    headers["Content-Range"] = f"bytes {first}-{last}/{size}"
    return Response(
        content[first : last + 1], status_code=206, media_type="audio/wav", headers=headers
    )
