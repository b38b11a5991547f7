"""HTTP endpoints for calls: thin, they hand everything to CallService."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import Field, TypeAdapter, ValidationError

from app.auth import Reader, authorize
from app.calls.openapi import (
    EVENTS_RESPONSES,
    LIST_RESPONSES,
    PLACE_EXAMPLES,
    PLACE_RESPONSES,
    READ_RESPONSES,
    RECORDING_RESPONSES,
)
from app.calls.schemas import (
    NO_NUL,
    CallCreate,
    CallEventList,
    CallEventOut,
    CallOut,
    CallPage,
    PhoneNumberText,
)
from app.calls.service import CallFilters, CallService
from app.errors import PROBLEM_CONTENT_TYPE, Problem, validation_problem
from app.notify_targets import notify_url_refusal

router = APIRouter(prefix="/calls", tags=["calls"])
REF_MAX_LENGTH = 64
REF_DESCRIPTION = "The Exotel Sid or the call's id"
CallRef = Annotated[
    str, Path(max_length=REF_MAX_LENGTH, pattern=NO_NUL, description=REF_DESCRIPTION)
]
# GET /calls/{ref} takes the bare request (see get_call): the same rules, checked by the
# endpoint, and its parameter and security documented as FastAPI would.
_REF = TypeAdapter(Annotated[str, Field(max_length=REF_MAX_LENGTH, pattern=NO_NUL)])
_GET_CALL_OPENAPI = {
    "security": [{"HTTPBearer": []}],
    "parameters": [
        {
            "name": "ref",
            "in": "path",
            "required": True,
            "schema": {**_REF.json_schema(), "description": REF_DESCRIPTION, "title": "Ref"},
            "description": REF_DESCRIPTION,
        }
    ],
}


def _service(request: Request) -> CallService:
    service: CallService = request.app.state.calls
    return service


# POST /calls takes the bare request too (see place_call); its body and header are
# documented as FastAPI would (the CallCreate schema is added by app/openapi.py).
_IDEMPOTENCY_KEY = TypeAdapter(Annotated[str, Field(min_length=1, max_length=255)])
_PLACE_CALL_OPENAPI = {
    "security": [{"HTTPBearer": []}],
    "parameters": [
        {
            "name": "Idempotency-Key",
            "in": "header",
            "required": False,
            "schema": {
                "anyOf": [_IDEMPOTENCY_KEY.json_schema(), {"type": "null"}],
                "title": "Idempotency-Key",
            },
        }
    ],
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {"$ref": "#/components/schemas/CallCreate"},
                "examples": PLACE_EXAMPLES,
            }
        },
    },
}


def _require_json(request: Request) -> None:
    """Refuse a body not sent as JSON (415), before it is validated as one (422)."""
    content_type = request.headers.get("content-type", "")
    media_type = content_type.partition(";")[0].strip().lower()
    main_type, _, subtype = media_type.partition("/")
    if main_type != "application" or not (subtype == "json" or subtype.endswith("+json")):
        raise Problem(415, "unsupported-media-type", "The body must be JSON (application/json)")


def _not_json(position: int | None = None) -> dict[str, Any]:
    location = ("body",) if position is None else ("body", position)
    return {"type": "json_invalid", "loc": location, "msg": "JSON decode error"}


def _place_request(body: bytes, idempotency_key: str | None) -> tuple[CallCreate, str | None]:
    """The request and its Idempotency-Key, or every error in them (422), located as
    FastAPI locates its own."""
    errors: list[Any] = []
    if idempotency_key is not None:
        try:
            _IDEMPOTENCY_KEY.validate_python(idempotency_key)
        except ValidationError as exc:
            errors += [
                {**error, "loc": ("header", "Idempotency-Key", *error["loc"])}
                for error in exc.errors()
            ]
    request = None
    try:
        parsed = json.loads(body) if body else None
    except json.JSONDecodeError as exc:
        errors.append(_not_json(exc.pos))
    except (ValueError, RecursionError):
        # Not UTF-8, a number too long for Python, or nested too deep.
        errors.append(_not_json())
    else:
        if parsed is None:  # no body, or JSON's null: FastAPI takes both as none
            errors.append({"type": "missing", "loc": ("body",), "msg": "Field required"})
        else:
            try:
                request = CallCreate.model_validate(parsed)
            except ValidationError as exc:
                errors += [{**error, "loc": ("body", *error["loc"])} for error in exc.errors()]
    if errors or request is None:
        raise RequestValidationError(errors)
    return request, idempotency_key


@router.post(
    "",
    status_code=201,
    summary="Place a call: ring `from`, then bridge `to`",
    response_model=CallOut,
    responses=PLACE_RESPONSES,
    openapi_extra=_PLACE_CALL_OPENAPI,
)
async def place_call(request: Request) -> Response:
    # As get_call: app.middleware.HotRoutes calls this with the bare request. It checks,
    # in this order, the key (401, 403), the media type (415), the body and the header
    # (422, all errors at once), then places the call; the client's limit (429) is
    # taken by the statement that stores it, so a refused request costs no place.
    client = authorize(request, "write")
    _require_json(request)
    body, idempotency_key = _place_request(
        await request.body(), request.headers.get("idempotency-key")
    )
    if body.notify_url is not None:
        allowed_hosts: frozenset[str] = request.app.state.notify_allowed_hosts
        refusal = notify_url_refusal(body.notify_url.host or "", allowed_hosts)
        if refusal is not None:
            raise validation_problem([{"field": "notify_url", "message": refusal}])
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
    responses=LIST_RESPONSES,
)
async def list_calls(
    request: Request,
    _: Reader,
    status: Annotated[str | None, Query(max_length=32, pattern=NO_NUL)] = None,
    from_: Annotated[PhoneNumberText | None, Query(alias="from")] = None,
    to: Annotated[PhoneNumberText | None, Query()] = None,
    custom_field: Annotated[str | None, Query(max_length=128, pattern=NO_NUL)] = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> Response:
    service = _service(request)
    filters = CallFilters(
        status=status,
        from_number=from_,
        to_number=to,
        custom_field=custom_field,
        created_after=created_after,
        created_before=created_before,
    )
    page = await service.list(filters, limit=limit, cursor=cursor)
    return Response(page, media_type="application/json")


@router.get(
    "/{ref}",
    summary="Read one call by its Exotel Sid or its id",
    response_model=CallOut,
    responses=READ_RESPONSES,
    openapi_extra=_GET_CALL_OPENAPI,
)
async def get_call(request: Request) -> Response:
    # Dashboards poll this. FastAPI's routing, parameters and dependencies cost more CPU
    # than the read itself (bench/README.md): app.middleware.HotRoutes calls this with the
    # bare request, and it checks the key and the ref itself, with the same rules and
    # answers as CallRef and Reader.
    authorize(request, "read")
    try:
        ref = _REF.validate_python(request.path_params["ref"])
    except ValidationError as exc:
        # Answered by the same handler as FastAPI's own path validation.
        raise RequestValidationError(
            [{**error, "loc": ("path", "ref", *error["loc"])} for error in exc.errors()]
        ) from None
    return Response(await _service(request).get_resource(ref), media_type="application/json")


@router.get(
    "/{ref}/recording",
    summary="The call's recording, streamed from Exotel; `Range` lets a player seek",
    response_class=StreamingResponse,
    responses=RECORDING_RESPONSES,
)
async def get_recording(
    ref: CallRef,
    request: Request,
    _: Reader,
    range_: Annotated[
        str | None,
        Header(
            alias="Range",
            max_length=256,
            description="A byte range, e.g. `bytes=1000-`, as an <audio> element sends",
        ),
    ] = None,
) -> StreamingResponse:
    return await _service(request).recording(ref, range_)


@router.get(
    "/{ref}/events",
    summary="What Exotel reported about a call, oldest first, with the raw payloads",
    response_model=CallEventList,
    responses=EVENTS_RESPONSES,
)
async def list_call_events(ref: CallRef, request: Request, _: Reader) -> CallEventList:
    events = await _service(request).events(ref)
    return CallEventList(items=[CallEventOut.from_event(event) for event in events])
