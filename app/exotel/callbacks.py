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

# A connect call has two legs, numbered from 0 (leg 0 rings From, leg 1 To); what a
# payload says of any other leg is not applied. ASCII digits only: `\d` would also take
# "Legs[\\u0663][Status]" (an Arabic-Indic three) as a leg index.
CONNECT_LEGS = 2
LEG_KEY = re.compile(r"Legs\[([0-9]{1,3})\]\[(\w+)\]", re.ASCII)
LEG_FIELDS = {"Status": "status", "OnCallDuration": "on_call_duration", "AnsweredBy": "answered_by"}
# Longer JSON integers than this are kept as text: Python refuses to convert past 4,300
# digits (a ValueError), and the conversion costs quadratic time before that.
MAX_INT_DIGITS = 30
# The payload names ExotelCallback reads; anything else is ignored before validation.
CALLBACK_FIELDS = frozenset(
    field.alias or name for name, field in ExotelCallback.model_fields.items()
)


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
    """Read a callback body; raises only CallbackError (and its subclasses).

    Only what cannot be a callback at all is refused: an unknown Content-Type, a body
    that is not JSON or form data, no usable CallSid. A value that cannot be read
    (wrong shape, out of range, unknown word) is "not said", so the rest still counts.
    """
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


def _keep_as_text(constant: str) -> str:
    """JSON's `NaN` and `Infinity` stay words (and so are no number), not floats."""
    return constant


def _int_or_text(digits: str) -> int | str:
    """A JSON integer; one too long to be any of Exotel's stays text (no slow conversion)."""
    return int(digits) if len(digits) <= MAX_INT_DIGITS else digits


def _json_fields(body: bytes) -> dict[str, Any]:
    try:
        document = json.loads(body, parse_constant=_keep_as_text, parse_int=_int_or_text)
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError too
        raise UnreadableCallback(f"The body is not valid JSON: {exc}") from exc
    except RecursionError:
        # Arrays nested thousands deep: no callback looks like that.
        raise UnreadableCallback("The JSON body is nested too deeply") from None
    if not isinstance(document, dict):
        raise UnreadableCallback("The JSON body is not an object")
    fields = {name: value for name, value in document.items() if name in CALLBACK_FIELDS}
    legs = document.get("Legs")
    # Legs of another shape than an array of objects say nothing.
    fields["Legs"] = (
        [_leg(index, leg) for index, leg in enumerate(legs[:CONNECT_LEGS]) if isinstance(leg, dict)]
        if isinstance(legs, list)
        else []
    )
    return fields


class _MultiPartParser(MultiPartParser):
    """Starlette's parser, noting whether the closing boundary came.

    python-multipart accepts a body cut short and silently drops its last part: half a
    callback would then be applied as if it were whole.
    """

    complete = False

    def on_end(self) -> None:
        self.complete = True


async def _read_form(body: bytes, content_type: str, *, multipart: bool) -> FormData:
    async def stream() -> AsyncGenerator[bytes, None]:
        yield body

    headers = Headers({"content-type": content_type})
    try:
        if multipart:
            # Exotel sends fields only; refusing file parts keeps temporary files out.
            parser = _MultiPartParser(headers, stream(), max_files=0)
            form = await parser.parse()
            if not parser.complete:
                raise UnreadableCallback("The multipart body ends before its closing boundary")
            return form
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
            if name in CALLBACK_FIELDS:
                fields[name] = value
            continue
        index = int(leg_key[1])
        if index < CONNECT_LEGS:
            legs.setdefault(index, {})[leg_key[2]] = value
    fields["Legs"] = [_leg(index, legs[index]) for index in sorted(legs)]
    return fields


def _leg(index: int, leg: Mapping[str, Any]) -> dict[str, Any]:
    return {"leg": index} | {
        LEG_FIELDS[key]: value for key, value in leg.items() if key in LEG_FIELDS
    }


def _validated(fields: dict[str, Any]) -> ExotelCallback:
    """The callback, leaving out each value that does not validate (and only those)."""
    while True:
        try:
            return ExotelCallback.model_validate(fields)
        except ValidationError as exc:
            errors = exc.errors(include_url=False)
        except RecursionError:
            # A value nested deep enough for pydantic to give up: not a callback.
            raise UnreadableCallback("The body is nested too deeply") from None
        if any(error["loc"][:1] == ("CallSid",) for error in errors):
            raise InvalidCallback([_sid_error(fields)])
        # Each round leaves out at least one of the few values there are, so this ends.
        if not any([_dropped(fields, error["loc"]) for error in errors]):
            raise InvalidCallback(
                [{"field": _dotted(error["loc"]), "message": error["msg"]} for error in errors]
            )


def _dropped(fields: dict[str, Any], location: tuple[int | str, ...]) -> bool:
    """Leave out the value at `location` (a field, or one field of a leg); True if it was there."""
    if location[:1] == ("Legs",) and len(location) >= 3 and isinstance(location[1], int):
        legs = fields["Legs"]
        return location[1] < len(legs) and legs[location[1]].pop(str(location[2]), None) is not None
    return bool(location) and fields.pop(str(location[0]), None) is not None


def _dotted(location: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in location)


def _sid_error(fields: Mapping[str, Any]) -> dict[str, str]:
    if fields.get("CallSid") is None:
        return {"field": "CallSid", "message": "Required: the Exotel Call Sid"}
    return {"field": "CallSid", "message": "Not an Exotel Call Sid (text of 1 to 64 characters)"}
