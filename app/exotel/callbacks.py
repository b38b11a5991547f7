"""Exotel status callbacks: from the bytes of a request to one `ExotelCallback`.

Exotel posts `multipart/form-data` unless asked for `application/json`; some proxies and
tools re-encode as `application/x-www-form-urlencoded`. Forms flatten the legs into keys
such as `Legs[0][Status]`, JSON sends a `Legs` array; both become the same model. Forms
are read by Starlette's parsers (python-multipart), the same code that reads any form
FastAPI receives.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import Any

from pydantic import ValidationError
from python_multipart.multipart import parse_options_header
from starlette.datastructures import FormData, Headers
from starlette.formparsers import FormParser, MultiPartException, MultiPartParser

from app.exotel.schemas import ExotelCallback

JSON = "application/json"
MULTIPART = "multipart/form-data"
URLENCODED = "application/x-www-form-urlencoded"
SUPPORTED_MEDIA_TYPES = (MULTIPART, URLENCODED, JSON)

# Exotel numbers the attempted legs from 0; a connect call has two. The bound keeps an
# odd payload from turning into thousands of leg rows.
MAX_LEGS = 10
LEG_KEY = re.compile(r"Legs\[(\d+)\]\[(\w+)\]")
LEG_FIELDS = {"Status": "status", "OnCallDuration": "on_call_duration", "AnsweredBy": "answered_by"}


class CallbackError(ValueError):
    """A request body that cannot be read as a status callback."""


class UnsupportedContentType(CallbackError):
    """The Content-Type is none of the three Exotel may use."""


class UnreadableCallback(CallbackError):
    """The body is not well-formed JSON or form data."""


class InvalidCallback(CallbackError):
    """Well-formed, but not a status callback: CallSid missing, or values of the wrong shape."""

    def __init__(self, errors: Sequence[Mapping[str, str]]) -> None:
        self.errors = [dict(error) for error in errors]
        super().__init__("; ".join(f"{e['field']}: {e['message']}" for e in self.errors))


def _media_type(content_type: str | None) -> str:
    """`multipart/form-data; boundary=x` -> `multipart/form-data`; "" when absent."""
    if not content_type:
        return ""
    value, _ = parse_options_header(content_type)
    return value.decode("latin-1").strip().lower()


async def parse_callback(body: bytes, content_type: str | None) -> ExotelCallback:
    kind = _media_type(content_type)
    if kind == JSON:
        fields = _json_fields(body)
    elif kind in (MULTIPART, URLENCODED):
        assert content_type is not None
        fields = _form_fields(await _read_form(body, content_type, multipart=kind == MULTIPART))
    else:
        raise UnsupportedContentType(
            f"Content-Type {kind or '(none)'!r} is not one of {', '.join(SUPPORTED_MEDIA_TYPES)}"
        )
    return _validated(fields)


def _json_fields(body: bytes) -> dict[str, Any]:
    try:
        document = json.loads(body)
    except ValueError as exc:
        raise UnreadableCallback(f"The body is not valid JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise UnreadableCallback("The JSON body is not an object")
    legs = document.get("Legs")
    if legs is None:
        return document
    if not isinstance(legs, list):
        raise InvalidCallback([{"field": "Legs", "message": "Must be an array"}])
    if len(legs) > MAX_LEGS:
        raise InvalidCallback([{"field": "Legs", "message": f"More than {MAX_LEGS} legs"}])
    parsed = []
    for index, leg in enumerate(legs):
        if leg is None:
            continue
        if not isinstance(leg, dict):
            raise InvalidCallback([{"field": f"Legs[{index}]", "message": "Must be an object"}])
        parsed.append(_leg(index, leg))
    return {**document, "Legs": parsed}


async def _read_form(body: bytes, content_type: str, *, multipart: bool) -> FormData:
    async def stream() -> AsyncGenerator[bytes, None]:
        yield body

    headers = Headers({"content-type": content_type})
    try:
        if multipart:
            # Exotel sends fields only; refusing file parts keeps temporary files out.
            return await MultiPartParser(headers, stream(), max_files=0).parse()
        return await FormParser(headers, stream()).parse()
    except MultiPartException as exc:
        raise UnreadableCallback(f"The body is not valid form data: {exc.message}") from exc


def _form_fields(form: FormData) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    legs: dict[int, dict[str, str]] = {}
    for name, value in form.multi_items():
        assert isinstance(value, str)  # file parts were refused by the parser
        leg_key = LEG_KEY.fullmatch(name)
        if leg_key is None:
            fields[name] = value
            continue
        index = int(leg_key[1])
        if index >= MAX_LEGS:
            raise InvalidCallback([{"field": name, "message": f"Leg index above {MAX_LEGS - 1}"}])
        legs.setdefault(index, {})[leg_key[2]] = value
    if legs:
        fields["Legs"] = [_leg(index, legs[index]) for index in sorted(legs)]
    return fields


def _leg(index: int, leg: Mapping[str, Any]) -> dict[str, Any]:
    return {"leg": index} | {
        LEG_FIELDS[key]: value for key, value in leg.items() if key in LEG_FIELDS
    }


def _validated(fields: dict[str, Any]) -> ExotelCallback:
    sid = fields.get("CallSid")
    if sid is None or (isinstance(sid, str) and not sid.strip()):
        raise InvalidCallback([{"field": "CallSid", "message": "Required: the Exotel Call Sid"}])
    try:
        return ExotelCallback.model_validate(fields)
    except ValidationError as exc:
        raise InvalidCallback(
            [
                {"field": ".".join(str(part) for part in error["loc"]), "message": error["msg"]}
                for error in exc.errors(include_url=False)
            ]
        ) from exc
