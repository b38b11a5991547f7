"""POST /callbacks/exotel: where Exotel reports how each call went.

Exotel signs nothing, so the StatusCallback URL carries a per-call token. The endpoint
checks it (no database), reads the body under a size cap, parses it (CPU only), stores it
with one statement (CallbackInbox) and answers: 2xx means stored, not yet applied. The
applier (app/callbacks/applier.py) applies it within milliseconds. Exotel gives up after
two retries, so the answer never waits on a call's lock.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from app.callbacks.schemas import CALLBACK_REQUEST_BODY, CallbackAccepted
from app.callbacks.service import CallbackInbox, ReceivedCallback
from app.calls.tokens import CallbackTokens
from app.errors import (
    SERVER_PROBLEMS,
    Problem,
    problem_response,
    validation_problem,
)
from app.exotel.callbacks import (
    SUPPORTED_MEDIA_TYPES,
    InvalidCallback,
    UnreadableCallback,
    UnsupportedContentType,
    parse_callback,
)
from app.exotel.schemas import ExotelCallback
from app.metrics import CALLBACKS
from app.middleware import MAX_BODY_BYTES

CALLBACK_PATH = "/callbacks/exotel"
ACCEPTED = CallbackAccepted().model_dump_json().encode()
_STORED = CALLBACKS.labels("stored")


def _authenticate(request: Request, token: str | None) -> uuid.UUID:
    if not token:
        raise Problem(401, "callback-token-missing", "The callback URL has no token")
    tokens: CallbackTokens = request.app.state.tokens
    call_id = tokens.verify(token)
    if call_id is None:
        raise Problem(403, "callback-token-invalid", "The callback token is not valid")
    return call_id


@contextmanager
def _counting_refusals() -> Iterator[None]:
    """Count a refused callback by the problem it was refused with."""
    try:
        yield
    except Problem as problem:
        CALLBACKS.labels(problem.slug).inc()
        raise


async def _parsed(
    body: bytes, content_type: str | None
) -> tuple[ExotelCallback | None, Problem | None]:
    """The callback, or the problem that refuses it (the body is stored either way)."""
    try:
        return await parse_callback(body, content_type), None
    except UnsupportedContentType as exc:
        return None, Problem(415, "unsupported-media-type", str(exc))
    except UnreadableCallback as exc:
        return None, Problem(400, "callback-unreadable", str(exc))
    except InvalidCallback as exc:
        return None, validation_problem(exc.errors)


async def exotel_callback(request: Request) -> Response:
    with _counting_refusals():
        received_at = datetime.now(UTC)
        call_id = _authenticate(request, request.query_params.get("token"))
        # BodySizeLimitMiddleware has already capped the body while it streamed in.
        body = await request.body()
        content_type = request.headers.get("content-type")
        callback, refusal = await _parsed(body, content_type)
        inbox: CallbackInbox = request.app.state.callback_inbox
        await inbox.store(ReceivedCallback(call_id, callback, body, content_type, received_at))
        if refusal is not None:
            raise refusal
    _STORED.inc()
    return Response(ACCEPTED, media_type="application/json")


# The route is a plain Starlette one (app.main), outside FastAPI's parameter handling:
# Exotel's callbacks are most of the traffic, and the endpoint reads what it needs
# itself. This is its entry in the OpenAPI document.
OPENAPI: dict[str, Any] = {
    "tags": ["callbacks"],
    "summary": "Receive an Exotel status callback",
    "description": (
        "Exotel posts here (the StatusCallback URL of each call) when a call changes. "
        f"Accepts {', '.join(SUPPORTED_MEDIA_TYPES)}. A 2xx means the raw callback is stored "
        "durably; it is applied to the call the token names in the background, normally "
        "within tens of milliseconds: duplicates change nothing, a finished call never goes "
        "back to a running status, and an empty value never erases a stored one. A body "
        "that cannot be read is stored too, and refused (4xx)."
    ),
    "operationId": "exotel_callback",
    "parameters": [
        {
            "name": "token",
            "in": "query",
            "required": False,
            "schema": {"type": "string"},
            "description": "The per-call token Callbridge put in the StatusCallback URL",
        }
    ],
    "requestBody": CALLBACK_REQUEST_BODY,
    "responses": {
        "200": {
            "description": "Stored; applied in the background",
            "content": {
                "application/json": {
                    "schema": CallbackAccepted.model_json_schema(),
                    "example": {"status": "accepted"},
                }
            },
        },
        **{
            str(status): response
            for status, response in {
                400: problem_response(
                    "The body is not valid JSON or form data",
                    Problem(400, "callback-unreadable", "The JSON body is not an object"),
                ),
                401: problem_response(
                    "The URL has no token",
                    Problem(401, "callback-token-missing", "The callback URL has no token"),
                ),
                403: problem_response(
                    "The token is not valid, or names another call than the CallSid",
                    Problem(403, "callback-token-invalid", "The callback token is not valid"),
                ),
                404: problem_response(
                    "The token names no stored call",
                    Problem(404, "call-not-found", "The token names no stored call"),
                ),
                413: problem_response(
                    f"The body is larger than {MAX_BODY_BYTES} bytes",
                    Problem(
                        413,
                        "body-too-large",
                        f"The request body may not exceed {MAX_BODY_BYTES} bytes",
                    ),
                ),
                415: problem_response(
                    "The Content-Type is not one Exotel uses",
                    Problem(
                        415,
                        "unsupported-media-type",
                        "Content-Type 'text/plain' is not one of "
                        f"{', '.join(SUPPORTED_MEDIA_TYPES)}",
                    ),
                ),
                422: problem_response(
                    "The callback has no CallSid, or values of the wrong shape",
                    validation_problem([{"field": "CallSid", "message": "Field required"}]),
                ),
                **SERVER_PROBLEMS,
            }.items()
        },
    },
}
