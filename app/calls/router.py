"""HTTP endpoints for calls: thin, they hand everything to CallService."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import JSONResponse

from app.auth import Reader, Writer
from app.calls.schemas import CallCreate, CallEventList, CallEventOut, CallOut, CallPage
from app.calls.service import CallFilters, CallService
from app.errors import PROBLEM_CONTENT_TYPE

router = APIRouter(prefix="/calls", tags=["calls"])


def _service(request: Request) -> CallService:
    service: CallService = request.app.state.calls
    return service


def _problem(description: str) -> dict[str, Any]:
    return {"description": description, "content": {PROBLEM_CONTENT_TYPE: {}}}


AUTH_PROBLEMS: dict[int | str, dict[str, Any]] = {
    401: _problem("Missing or unknown API key"),
    403: _problem("The API key may not do this"),
    422: _problem("Invalid request: `errors` names each field"),
}


@router.post(
    "",
    status_code=201,
    summary="Place a call: ring `from`, then bridge `to`",
    response_model=CallOut,
    responses={
        **AUTH_PROBLEMS,
        409: _problem("A request with this Idempotency-Key is still in flight"),
        422: _problem(
            "Invalid request, Idempotency-Key reused with another body, or Exotel refused"
        ),
        502: _problem("Exotel failed, is unreachable, or rejected Callbridge's credentials"),
        503: _problem("Exotel is rate limiting; see Retry-After"),
        504: _problem("Exotel did not answer in time; the call's `id` is in the body"),
    },
)
async def place_call(
    body: CallCreate,
    request: Request,
    client: Writer,
    idempotency_key: Annotated[
        str | None, Header(alias="Idempotency-Key", min_length=1, max_length=255)
    ] = None,
) -> Response:
    answer, replayed = await _service(request).place(client, body, idempotency_key)
    headers = dict(answer.headers)
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    media_type = "application/json" if answer.status < 400 else PROBLEM_CONTENT_TYPE
    return JSONResponse(answer.body, answer.status, headers=headers, media_type=media_type)


@router.get(
    "",
    summary="List calls, newest first",
    response_model=CallPage,
    responses=AUTH_PROBLEMS,
)
async def list_calls(
    request: Request,
    _: Reader,
    status: str | None = None,
    from_: Annotated[str | None, Query(alias="from", max_length=32)] = None,
    to: Annotated[str | None, Query(max_length=32)] = None,
    custom_field: Annotated[str | None, Query(max_length=128)] = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> CallPage:
    service = _service(request)
    filters = CallFilters(
        status=status,
        from_number=from_,
        to_number=to,
        custom_field=custom_field,
        created_after=created_after,
        created_before=created_before,
    )
    calls, next_cursor = await service.list(filters, limit=limit, cursor=cursor)
    return CallPage(items=[CallOut.from_call(call) for call in calls], next_cursor=next_cursor)


@router.get(
    "/{ref}",
    summary="Read one call by its Exotel Sid or its id",
    response_model=CallOut,
    responses={**AUTH_PROBLEMS, 404: _problem("No call has this sid or id")},
)
async def get_call(ref: str, request: Request, _: Reader) -> CallOut:
    return CallOut.from_call(await _service(request).get(ref))


@router.get(
    "/{ref}/events",
    summary="What Exotel reported about a call, oldest first, with the raw payloads",
    response_model=CallEventList,
    responses={**AUTH_PROBLEMS, 404: _problem("No call has this sid or id")},
)
async def list_call_events(ref: str, request: Request, _: Reader) -> CallEventList:
    events = await _service(request).events(ref)
    return CallEventList(items=[CallEventOut.from_event(event) for event in events])
