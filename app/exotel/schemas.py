"""Typed models of what Exotel sends us: API answers, errors and status callbacks.

Exotel is loose with types: numbers arrive as strings ("17", "1.500"), absent values
as "", null or a missing key, and times as naive "YYYY-MM-DD HH:mm:ss" in IST. The
validators here absorb all of that so the rest of the service sees clean values.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

EXOTEL_TIMEZONE = ZoneInfo("Asia/Kolkata")
TERMINAL_STATUSES = frozenset({"completed", "failed", "busy", "no-answer", "canceled"})
# Every call status Exotel uses. Call details also say `queued` and `ringing` (the call
# is waiting, or a leg rings): kept as they are, both are in the contract's status list.
CALL_STATUSES = TERMINAL_STATUSES | {"queued", "ringing", "in-progress"}
# Exotel writes "no time" as the epoch in IST: `1970-01-01 05:30:00`.
EMPTY_TIME = datetime(1970, 1, 1, tzinfo=UTC)
# What AnsweredBy may say, casing aside, and how Callbridge spells it. `NA` (not
# applicable, always on the first leg) means nobody: it is not an answer.
ANSWERED_BY = {"human": "human", "machine": "machine", "notsure": "not-sure"}
MAX_DETAIL_LEGS = 10
_DETAIL_LEG_IDS = frozenset(str(number) for number in range(1, MAX_DETAIL_LEGS + 1))


def _blank_to_none(value: Any) -> Any:
    if isinstance(value, str) and not value.strip():
        return None
    if isinstance(value, str) and value.strip().lower() in {"null", "none"}:
        return None
    return value


def _lenient_int(value: Any) -> int | None:
    value = _blank_to_none(value)
    if value is None:
        return None
    try:
        return int(Decimal(str(value).strip()))
    except (InvalidOperation, ValueError):
        return None


def _lenient_decimal(value: Any) -> Decimal | None:
    value = _blank_to_none(value)
    if value is None:
        return None
    try:
        return Decimal(str(value).strip())
    except InvalidOperation:
        return None


def _exotel_time(value: Any) -> datetime | None:
    value = _blank_to_none(value)
    if value is None:
        return None
    if isinstance(value, datetime):
        parsed = value
    else:
        try:
            parsed = datetime.fromisoformat(str(value).strip())
        except ValueError:
            return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=EXOTEL_TIMEZONE)
    return parsed


def _not_the_empty_marker(value: datetime | None) -> datetime | None:
    return None if value == EMPTY_TIME else value


def _answered_by(value: Any) -> Any:
    """`HUMAN`, `Human`, `human` -> "human"; `NotSure`, `not_sure` -> "not-sure"; `NA` -> None.

    A word Exotel may add later is kept, lowercased, rather than lost."""
    value = _blank_to_none(value)
    if not isinstance(value, str):
        return value
    word = value.strip().lower()
    if word in {"na", "n/a", "not applicable"}:
        return None
    return ANSWERED_BY.get(word.replace("-", "").replace("_", "").replace(" ", ""), word)


def _lower_or_none(value: Any) -> Any:
    value = _blank_to_none(value)
    return value.strip().lower() if isinstance(value, str) else value


OptionalText = Annotated[str | None, BeforeValidator(_blank_to_none)]
OptionalStatus = Annotated[str | None, BeforeValidator(_lower_or_none)]
OptionalInt = Annotated[int | None, BeforeValidator(_lenient_int)]
OptionalDecimal = Annotated[Decimal | None, BeforeValidator(_lenient_decimal)]
ExotelTime = Annotated[
    datetime | None, BeforeValidator(_exotel_time), AfterValidator(_not_the_empty_marker)
]
AnsweredBy = Annotated[str | None, BeforeValidator(_answered_by)]


class _ExotelModel(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)


class LegUpdate(_ExotelModel):
    """One leg as Exotel reports it: leg 0 is From, leg 1 is To."""

    leg: int
    status: OptionalStatus = None
    on_call_duration: OptionalInt = None
    answered_by: AnsweredBy = None


class CallUpdate(_ExotelModel):
    """What one message from Exotel (connect answer, callback, call details) says of a call.

    `None` always means "not said", never "erase".
    """

    sid: OptionalText = None
    status: OptionalStatus = None
    date_created: ExotelTime = None
    date_updated: ExotelTime = None
    start_time: ExotelTime = None
    end_time: ExotelTime = None
    duration: OptionalInt = None
    conversation_duration: OptionalInt = None
    price: OptionalDecimal = None
    recording_url: OptionalText = None
    # The call's: the first leg's answer that is not `NA` (in practice the To leg's).
    answered_by: AnsweredBy = None
    direction: OptionalText = None
    legs: tuple[LegUpdate, ...] = ()

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


class ExotelDetailLeg(_ExotelModel):
    """One of `Details.Legs`: `{"Leg": {"Id": 1, "OnCallDuration": 21}}`, ids from 1."""

    id: int = Field(alias="Id", ge=1, le=MAX_DETAIL_LEGS)
    on_call_duration: OptionalInt = Field(None, alias="OnCallDuration")


def _detail_legs(value: Any) -> Any:
    """Unwrap `{"Leg": {...}}` entries; drop what is not a leg rather than the answer."""
    if not isinstance(value, list):
        return ()
    legs = []
    for entry in value[:MAX_DETAIL_LEGS]:
        leg = entry.get("Leg", entry) if isinstance(entry, dict) else None
        if isinstance(leg, dict) and str(leg.get("Id")) in _DETAIL_LEG_IDS:
            legs.append(leg)
    return legs


class ExotelCallDetails(_ExotelModel):
    """`Details` of a call-details answer (`?details=true`)."""

    conversation_duration: OptionalInt = Field(None, alias="ConversationDuration")
    leg1_status: OptionalStatus = Field(None, alias="Leg1Status")
    leg2_status: OptionalStatus = Field(None, alias="Leg2Status")
    legs: Annotated[tuple[ExotelDetailLeg, ...], BeforeValidator(_detail_legs)] = Field(
        (), alias="Legs"
    )

    def leg_updates(self) -> tuple[LegUpdate, ...]:
        """Legs 0 (From) and 1 (To) as far as the details tell them; ids 1-based there."""
        durations = {leg.id - 1: leg.on_call_duration for leg in self.legs}
        statuses = {0: self.leg1_status, 1: self.leg2_status}
        return tuple(
            LegUpdate(leg=index, status=statuses.get(index), on_call_duration=durations.get(index))
            for index in sorted(statuses.keys() | durations.keys())
            if statuses.get(index) is not None or durations.get(index) is not None
        )


class ExotelCall(_ExotelModel):
    """The `Call` object of Exotel's connect and call-details answers."""

    sid: str = Field(alias="Sid")
    parent_call_sid: OptionalText = Field(None, alias="ParentCallSid")
    date_created: ExotelTime = Field(None, alias="DateCreated")
    date_updated: ExotelTime = Field(None, alias="DateUpdated")
    account_sid: OptionalText = Field(None, alias="AccountSid")
    to: OptionalText = Field(None, alias="To")
    from_: OptionalText = Field(None, alias="From")
    phone_number_sid: OptionalText = Field(None, alias="PhoneNumberSid")
    status: OptionalStatus = Field(None, alias="Status")
    start_time: ExotelTime = Field(None, alias="StartTime")
    end_time: ExotelTime = Field(None, alias="EndTime")
    duration: OptionalInt = Field(None, alias="Duration")
    price: OptionalDecimal = Field(None, alias="Price")
    direction: OptionalText = Field(None, alias="Direction")
    answered_by: AnsweredBy = Field(None, alias="AnsweredBy")
    recording_url: OptionalText = Field(None, alias="RecordingUrl")
    details: ExotelCallDetails | None = Field(None, alias="Details")

    def to_update(self) -> CallUpdate:
        return CallUpdate(
            sid=self.sid,
            status=self.status,
            date_created=self.date_created,
            date_updated=self.date_updated,
            start_time=self.start_time,
            end_time=self.end_time,
            duration=self.duration,
            conversation_duration=self.details.conversation_duration if self.details else None,
            price=self.price,
            recording_url=self.recording_url,
            answered_by=self.answered_by,
            direction=self.direction,
            legs=self.details.leg_updates() if self.details else (),
        )

    @property
    def has_figures(self) -> bool:
        """Whether Exotel has filled in what it fills minutes after the end (Price)."""
        return self.price is not None


class ExotelCallEnvelope(_ExotelModel):
    call: ExotelCall = Field(alias="Call")


class ExotelPageMetadata(_ExotelModel):
    next_page_uri: OptionalText = Field(None, alias="NextPageUri")


class ExotelCallList(_ExotelModel):
    """Answer of the bulk call-details API (`Calls.json`).

    Exotel documents three paging shapes: `Metadata.NextPageUri`, a top-level
    `NextPageUri`, and `Metadata` whose `NextPageUri` carries an `AfterSid`. All three
    come down to one next link.
    """

    calls: tuple[ExotelCall, ...] = Field((), alias="Calls")
    metadata: ExotelPageMetadata | None = Field(None, alias="Metadata")
    top_level_next_page_uri: OptionalText = Field(None, alias="NextPageUri")

    @property
    def next_page_uri(self) -> str | None:
        from_metadata = self.metadata.next_page_uri if self.metadata else None
        return from_metadata or self.top_level_next_page_uri


class ExotelRestException(_ExotelModel):
    status: OptionalInt = Field(None, alias="Status")
    message: OptionalText = Field(None, alias="Message")
    code: int | str | None = Field(None, alias="Code")


class ExotelErrorEnvelope(_ExotelModel):
    rest_exception: ExotelRestException = Field(alias="RestException")


def _sid(value: Any) -> Any:
    value = _blank_to_none(value)
    return value.strip() if isinstance(value, str) else value


class ExotelCallback(_ExotelModel):
    """A status callback, parsed from multipart, urlencoded or JSON (see callbacks.py).

    Fields carry Exotel's names as aliases. `event_type` and `status` are kept as sent
    (lowercased): Exotel adds event types over time, and an unknown word must not make
    us refuse, and so lose, the callback.
    """

    model_config = ConfigDict(coerce_numbers_to_str=True)

    call_sid: Annotated[str, BeforeValidator(_sid)] = Field(
        alias="CallSid", min_length=1, max_length=64
    )
    event_type: OptionalStatus = Field(None, alias="EventType")
    status: OptionalStatus = Field(None, alias="Status")
    date_created: ExotelTime = Field(None, alias="DateCreated")
    date_updated: ExotelTime = Field(None, alias="DateUpdated")
    start_time: ExotelTime = Field(None, alias="StartTime")
    end_time: ExotelTime = Field(None, alias="EndTime")
    conversation_duration: OptionalInt = Field(None, alias="ConversationDuration")
    recording_url: OptionalText = Field(None, alias="RecordingUrl")
    custom_field: OptionalText = Field(None, alias="CustomField")
    from_: OptionalText = Field(None, alias="From")
    to: OptionalText = Field(None, alias="To")
    phone_number_sid: OptionalText = Field(None, alias="PhoneNumberSid")
    direction: OptionalText = Field(None, alias="Direction")
    legs: tuple[LegUpdate, ...] = Field((), alias="Legs")

    def to_update(self) -> CallUpdate:
        answered_by = next((leg.answered_by for leg in self.legs if leg.answered_by), None)
        return CallUpdate(
            sid=self.call_sid,
            status=self.status,
            date_created=self.date_created,
            date_updated=self.date_updated,
            start_time=self.start_time,
            end_time=self.end_time,
            conversation_duration=self.conversation_duration,
            recording_url=self.recording_url,
            answered_by=answered_by,
            direction=self.direction,
            legs=self.legs,
        )
