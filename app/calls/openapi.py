"""What /docs shows for the calls endpoints: every answer, with an example of each.

Kept out of router.py so the endpoints stay readable. Error examples are built from
the same Problem type the service raises, so they cannot drift from real answers.
"""

from __future__ import annotations

from typing import Any

from app.calls.recording import no_recording
from app.errors import SERVER_PROBLEMS, Problem, database_unavailable, problem_response
from app.ratelimit import RATE_LIMITED_RESPONSE

CALL_ID = "4f0c1d1e-9a4b-4c55-8f0e-2d5b7c9e1a20"
SID = "c5797dcbaaeed7678c4062a4a3ed2f8a"

CALL_EXAMPLE: dict[str, Any] = {
    "id": CALL_ID,
    "sid": SID,
    "status": "completed",
    "from": "+919876543210",
    "to": "+919123456789",
    "caller_id": "+918047112233",
    "direction": "outbound-api",
    "custom_field": "order-1234",
    "created_at": "2026-11-26T10:00:00Z",
    # Once Exotel's figures (price, duration) are in, some minutes after the end.
    "updated_at": "2026-11-26T10:03:35Z",
    "start_time": "2026-11-26T10:00:01Z",
    "end_time": "2026-11-26T10:00:32Z",
    "duration": 31,
    "conversation_duration": 22,
    "price": 1.5,
    "recording_url": None,
    "answered_by": "human",
    "legs": [
        {"leg": 0, "number": "+919876543210", "status": "completed", "on_call_duration": 28},
        {"leg": 1, "number": "+919123456789", "status": "completed", "on_call_duration": 22},
    ],
    "error": None,
    "notify": None,
}
PLACED_EXAMPLE = CALL_EXAMPLE | {
    "status": "in-progress",
    "updated_at": "2026-11-26T10:00:00Z",
    "end_time": None,
    "duration": None,
    "conversation_duration": None,
    "price": None,
    "answered_by": None,
    "legs": [
        {"leg": 0, "number": "+919876543210", "status": None, "on_call_duration": None},
        {"leg": 1, "number": "+919123456789", "status": None, "on_call_duration": None},
    ],
}
EVENT_EXAMPLE = {
    "id": 1,
    "source": "callback",
    "received_at": "2026-11-26T10:01:02Z",
    "content_type": "application/json",
    "event_type": "terminal",
    "status": "completed",
    "applied": True,
    "payload": '{"CallSid": "c5797dcbaaeed7678c4062a4a3ed2f8a", "Status": "completed", ...}',
}


PLACE_EXAMPLES: dict[str, Any] = {
    "minimal": {
        "summary": "Ring `from`, then `to`, from the default ExoPhone",
        "value": {"from": "09876543210", "to": "+919123456789"},
    },
    "everything": {
        "summary": "Every option but notify_url",
        "description": "`notify_url` is left out: an example receiver would only collect a "
        "day of failed deliveries. Give your own public https endpoint.",
        "value": {
            "from": "+919876543210",
            "to": "09123456789",
            "caller_id": "08047112233",
            "call_type": "trans",
            "time_limit": 600,
            "time_out": 30,
            "wait_url": "https://cdn.example.com/hold.wav",
            "record": True,
            "recording_channels": "dual",
            "recording_format": "mp3-hq",
            "custom_field": "order-1234",
            "start_playback_to": "both",
            "start_playback_value": "https://cdn.example.com/intro.mp3",
            "stream_url": "wss://stream.example.com/audio",
            "stream_begin": "leg2_connect",
        },
    },
}


def _ok(description: str, example: Any, headers: dict[str, str] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"example": example}},
    }
    if headers:
        response["headers"] = {
            name: {"description": meaning, "schema": {"type": "string"}}
            for name, meaning in headers.items()
        }
    return response


UNAUTHORIZED = problem_response(
    "Missing or unknown API key",
    Problem(401, "unauthorized", "Unknown API key"),
    headers={"WWW-Authenticate": "Bearer"},
)
INVALID = Problem(
    422,
    "validation-error",
    "Invalid request: to",
    errors=[{"field": "to", "message": "Not a valid phone number"}],
)
NOT_FOUND = problem_response(
    "No call has this sid or id",
    Problem(404, "call-not-found", f"No call has the sid or id '{SID}'"),
)
EXOTEL_FAILURE_EXTRA = {"id": CALL_ID, "exotel_code": None}

PLACE_RESPONSES: dict[int | str, dict[str, Any]] = {
    201: _ok(
        "The call was placed: Exotel is ringing `from`",
        PLACED_EXAMPLE,
        headers={
            "Location": "`/calls/{sid}`",
            "Idempotent-Replayed": "`true` when this answers an earlier request's key",
        },
    ),
    400: problem_response(
        "The body could not be read as text (not UTF-8)",
        Problem(400, "bad-request", "There was an error parsing the body"),
    ),
    401: UNAUTHORIZED,
    403: problem_response(
        "The API key may only read", Problem(403, "forbidden", "This API key may only read calls")
    ),
    409: problem_response(
        "A request with this Idempotency-Key is still being processed",
        Problem(
            409,
            "request-in-progress",
            "A request with this Idempotency-Key is still being processed; retry shortly",
        ),
        headers={"Retry-After": "Seconds to wait before retrying"},
    ),
    413: problem_response(
        "The body is larger than 64 KiB",
        Problem(413, "body-too-large", "The request body may not exceed 65536 bytes"),
    ),
    415: problem_response(
        "The body is not JSON",
        Problem(415, "unsupported-media-type", "The body must be JSON (application/json)"),
    ),
    422: problem_response(
        "Invalid request, an Idempotency-Key reused with another body, or Exotel refused "
        "the call (bad number, DND/NDNC, KYC); nothing was placed",
        INVALID,
        Problem(
            422,
            "idempotency-key-reused",
            "This Idempotency-Key was already used with a different request body",
        ),
        Problem(
            422,
            "exotel-refused",
            "Call to this number is blocked by DND/NDNC",
            extra={"id": CALL_ID, "exotel_code": "34001"},
        ),
    ),
    429: RATE_LIMITED_RESPONSE,
    500: SERVER_PROBLEMS[500],
    502: problem_response(
        "Exotel failed, is unreachable, or refused Callbridge's credentials; nothing was placed",
        Problem(
            502,
            "exotel-unavailable",
            "Exotel could not be reached: ConnectError",
            extra=EXOTEL_FAILURE_EXTRA,
        ),
        Problem(
            502,
            "exotel-auth-failed",
            "Exotel rejected Callbridge's credentials",
            extra=EXOTEL_FAILURE_EXTRA,
        ),
    ),
    503: problem_response(
        "Exotel is rate limiting calls, or the database is not reachable",
        Problem(
            503,
            "exotel-rate-limited",
            "Exotel is rate limiting calls; retry later",
            extra=EXOTEL_FAILURE_EXTRA,
        ),
        database_unavailable(),
        headers={"Retry-After": "Seconds to wait before retrying"},
    ),
    504: problem_response(
        "The request reached Exotel but no answer came back: the call may exist. Read it "
        "by `id` (also in Location) until reconciliation settles it",
        Problem(
            504,
            "exotel-outcome-unknown",
            "Exotel did not answer in time; the call may or may not have been placed. "
            "Do not retry with a new key: read the call by its id until it is settled.",
            extra={"id": CALL_ID, "call_status": "unknown"},
        ),
        headers={"Location": "`/calls/{id}`"},
    ),
}

_READ_PROBLEMS: dict[int | str, dict[str, Any]] = {
    401: UNAUTHORIZED,
    422: problem_response("Invalid request: `errors` names each field", INVALID),
    **SERVER_PROBLEMS,
}
LIST_RESPONSES = {
    200: _ok("One page of calls", {"items": [CALL_EXAMPLE], "next_cursor": None}),
    **_READ_PROBLEMS,
}
READ_RESPONSES = {200: _ok("The call", CALL_EXAMPLE), 404: NOT_FOUND, **_READ_PROBLEMS}
_AUDIO = {
    media_type: {
        "schema": {"type": "string", "format": "binary"},
        "example": "<the recording's bytes>",
    }
    for media_type in ("audio/wav", "audio/mpeg")
}
RECORDING_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The whole recording, as Exotel serves it (WAV or MP3)",
        "content": _AUDIO,
        "headers": {"Accept-Ranges": {"description": "`bytes`", "schema": {"type": "string"}}},
    },
    206: {
        "description": "The bytes asked for with `Range`",
        "content": _AUDIO,
        "headers": {
            "Content-Range": {
                "description": "Which bytes, of how many",
                "schema": {"type": "string"},
            }
        },
    },
    404: problem_response(
        "No call has this sid or id, or the call has no recording (none was made, or "
        "Exotel no longer has it)",
        Problem(404, "call-not-found", f"No call has the sid or id '{SID}'"),
        no_recording(),
    ),
    416: problem_response(
        "The range is outside the recording",
        Problem(416, "range-not-satisfiable", "The range is outside the recording"),
    ),
    502: problem_response(
        "Exotel could not be reached or refused the download",
        Problem(502, "exotel-error", "Exotel could not be reached: ConnectError"),
    ),
    **_READ_PROBLEMS,
}
EVENTS_RESPONSES = {
    200: _ok("The call's events, oldest first", {"items": [EVENT_EXAMPLE]}),
    404: NOT_FOUND,
    **_READ_PROBLEMS,
}
