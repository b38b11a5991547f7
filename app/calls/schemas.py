"""The HTTP shapes of calls: what clients send to POST /calls and what they read back."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    AnyUrl,
    BaseModel,
    ConfigDict,
    Field,
    HttpUrl,
    PlainSerializer,
    UrlConstraints,
    ValidatorFunctionWrapHandler,
    field_validator,
)
from pydantic_core import to_json

from app.calls.state import CallState
from app.notify_targets import literal_address

WebSocketUrl = Annotated[AnyUrl, UrlConstraints(allowed_schemes=["ws", "wss"], max_length=2048)]
WebUrl = Annotated[HttpUrl, UrlConstraints(max_length=2048)]
# Digits, an optional leading +, and the separators people write, nothing else: the
# number parser would turn letters into keypad digits ("98765abcde" dialled
# +919876522233) and silently drop an extension.
_DIALABLE = re.compile(r" *\+?[0-9 ().-]+", re.ASCII)


def _dialable(number: str) -> str:
    if not _DIALABLE.fullmatch(number):
        raise ValueError(
            "Only digits, a leading +, spaces, dashes, dots and parentheses (no letters, "
            "no extension)"
        )
    return number


PhoneNumberText = Annotated[str, Field(min_length=1, max_length=32), AfterValidator(_dialable)]
# Every time reads in UTC, however it was learnt (Exotel's own are IST).
UtcDatetime = Annotated[
    datetime, PlainSerializer(lambda value: value.astimezone(UTC), return_type=datetime)
]
# Postgres text cannot hold NUL: refuse it at the edge (422), not in the database (500).
NO_NUL = r"^[^\x00]*$"


class CallCreate(BaseModel):
    """POST /calls. Exotel's parameter names are in brackets in the README."""

    model_config = ConfigDict(
        extra="forbid",
        populate_by_name=True,
        json_schema_extra={
            "examples": [
                {
                    "from": "+919876543210",
                    "to": "09123456789",
                    "caller_id": "08047112233",
                    "time_out": 30,
                    "record": True,
                    "custom_field": "order-1234",
                }
            ]
        },
    )

    from_: PhoneNumberText = Field(alias="from", description="Rung first (Exotel `From`).")
    to: PhoneNumberText = Field(description="Rung once `from` answers (Exotel `To`).")
    caller_id: PhoneNumberText | None = Field(
        None, description="ExoPhone; default EXOTEL_CALLER_ID"
    )
    call_type: Literal["trans"] | None = None
    time_limit: int | None = Field(None, ge=1, le=14400, description="Seconds before hang-up")
    time_out: int | None = Field(None, ge=1, le=60, description="Ring time of each leg, seconds")
    wait_url: WebUrl | None = Field(None, description="A .wav played to `from` while waiting")
    record: bool | None = None
    recording_channels: Literal["single", "dual"] | None = None
    recording_format: Literal["mp3", "mp3-hq"] | None = None
    custom_field: str | None = Field(None, max_length=128, pattern=NO_NUL)
    start_playback_to: Literal["callee", "both"] | None = None
    start_playback_value: WebUrl | None = None
    stream_url: WebSocketUrl | None = None
    stream_begin: Literal["leg1_connect", "leg2_connect"] | None = None
    notify_url: WebUrl | None = Field(None, description="Told, signed, when the call finishes")

    @field_validator("wait_url")
    @classmethod
    def _wait_url_is_wav(cls, value: HttpUrl | None) -> HttpUrl | None:
        if value is not None and not (value.path or "").lower().endswith(".wav"):
            raise ValueError("must point to a .wav file")
        return value

    @field_validator("notify_url", mode="wrap")
    @classmethod
    def _notify_url_is_plain(
        cls, value: object, handler: ValidatorFunctionWrapHandler
    ) -> HttpUrl | None:
        url: HttpUrl | None = handler(value)
        if url is None:
            return None
        if url.username is not None or url.password is not None:
            raise ValueError("must not hold credentials (user:password@)")
        if literal_address(_bare_host(url)) is not None and not _plainly_written(value, url):
            # `2130706433`, `0x7f000001` or `127.1` are 127.0.0.1 in disguise: written so,
            # an address could pass for another host in NOTIFY_ALLOWED_HOSTS.
            raise ValueError("write an IP address in its usual form (such as 192.0.2.10)")
        return url


def _plainly_written(given: object, url: HttpUrl) -> bool:
    """Whether the URL's IP address was written as it is normalised, not in another form."""
    try:
        host = urlsplit(str(given)).hostname or ""
        return ipaddress.ip_address(host) == literal_address(_bare_host(url))
    except ValueError:
        return False


def _bare_host(url: HttpUrl) -> str:
    """The URL's host; an IPv6 address without its brackets."""
    return (url.host or "").removeprefix("[").removesuffix("]")


class LegOut(BaseModel):
    leg: int
    number: str | None
    status: str | None
    on_call_duration: int | None


class ExotelErrorOut(BaseModel):
    status: int | None
    code: str | None
    message: str | None


class NotifyOut(BaseModel):
    """How the `call.finished` notification to the call's notify_url is going."""

    model_config = ConfigDict(from_attributes=True)

    status: Literal["pending", "delivered", "dead"]
    attempts: int
    last_error: str | None


class CallOut(BaseModel):
    """The call resource."""

    model_config = ConfigDict(populate_by_name=True)

    id: str
    sid: str | None
    status: str
    from_: str = Field(serialization_alias="from", validation_alias="from")
    to: str
    caller_id: str
    direction: str | None
    custom_field: str | None
    created_at: UtcDatetime
    updated_at: UtcDatetime
    start_time: UtcDatetime | None
    end_time: UtcDatetime | None
    duration: int | None
    conversation_duration: int | None
    price: float | None
    recording_url: str | None
    answered_by: str | None
    legs: list[LegOut]
    error: ExotelErrorOut | None
    notify: NotifyOut | None = Field(
        description="Delivery to notify_url once the call has finished; null before, or without one"
    )

    @classmethod
    def from_state(cls, call: CallState) -> CallOut:
        error = None
        if call.error_message is not None or call.error_status is not None:
            error = ExotelErrorOut(
                status=call.error_status, code=call.error_code, message=call.error_message
            )
        return cls(
            id=str(call.id),
            sid=call.sid,
            status=call.status,
            from_=call.from_number,
            to=call.to_number,
            caller_id=call.caller_id,
            direction=call.direction,
            custom_field=call.custom_field,
            created_at=call.created_at,
            updated_at=call.updated_at,
            start_time=call.start_time,
            end_time=call.end_time,
            duration=call.duration,
            conversation_duration=call.conversation_duration,
            price=float(call.price) if call.price is not None else None,
            recording_url=call.recording_url,
            answered_by=call.answered_by,
            legs=[
                LegOut(
                    leg=leg.leg,
                    number=leg.number,
                    status=leg.status,
                    on_call_duration=leg.on_call_duration,
                )
                for leg in call.legs
            ],
            error=error,
            notify=None if call.notify is None else NotifyOut.model_validate(call.notify),
        )


class CallPage(BaseModel):
    items: list[CallOut]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null at the end"
    )


class CallEventOut(BaseModel):
    """One message Exotel sent about a call, as received."""

    id: int
    source: str = Field(description="`callback`, or `reconcile` for a call-details lookup")
    received_at: datetime
    content_type: str | None
    event_type: str | None = Field(description="Exotel's EventType: `terminal`, `answered`...")
    status: str | None = Field(description="The call status the message reported")
    applied: bool = Field(description="Whether the message changed the call")
    payload: Any = Field(
        description="The body as received: a JSON body as its document, anything else as "
        "text (UTF-8; bad bytes replaced)"
    )

    @classmethod
    def from_event(cls, event: Any) -> CallEventOut:
        """From a `call_events` row."""
        return cls(
            id=event.id,
            source=event.source,
            received_at=event.received_at,
            content_type=event.content_type,
            event_type=event.event_type,
            status=event.status,
            applied=event.applied,
            payload=_payload(event.raw_body, event.content_type),
        )


class CallEventList(BaseModel):
    items: list[CallEventOut] = Field(description="Oldest first")


def _payload(raw_body: bytes, content_type: str | None) -> Any:
    """A JSON body as its document, if it reads as one that JSON can show again (no lone
    surrogate, no NaN, not nested beyond what the encoder follows); else the text."""
    if (content_type or "").split(";")[0].strip().lower() == "application/json":
        with contextlib.suppress(ValueError, RecursionError):
            document = json.loads(raw_body, parse_constant=_no_constant)
            to_json(document)
            return document
    return raw_body.decode("utf-8", errors="replace")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON a reader can take")
