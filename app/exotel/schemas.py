"""Typed models of what Exotel sends us: API answers, errors and status callbacks.

Exotel is loose with types: numbers arrive as strings ("17", "1.500"), absent values
as "", null or a missing key, and times as naive "YYYY-MM-DD HH:mm:ss" in IST. The
validators here absorb all of that so the rest of the service sees clean values.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

# India keeps no daylight saving time: a fixed +05:30 is exact, and far cheaper to convert
# than a ZoneInfo.
EXOTEL_TIMEZONE = timezone(timedelta(hours=5, minutes=30), "IST")
TERMINAL_STATUSES = frozenset({"completed", "failed", "busy", "no-answer", "canceled"})
# Exotel's words for a call's status, and for a leg's; any other word is "not said". Call
# details also say `queued` and `ringing` (the call waits, or a leg rings): kept as they
# are, both are in the contract's status list.
CALL_STATUSES = frozenset({"queued", "ringing", "in-progress", *TERMINAL_STATUSES})
# What AnsweredBy may say, casing aside, and how Callbridge spells it. `NA` (not
# applicable, always on the first leg) means nobody: it is not an answer.
ANSWERED_BY = {"human": "human", "machine": "machine", "notsure": "not-sure"}
MAX_DETAIL_LEGS = 10
_DETAIL_LEG_IDS = frozenset(str(number) for number in range(1, MAX_DETAIL_LEGS + 1))

# A plain decimal as Exotel writes numbers ("17", "1.500"): no exponent, no "Infinity",
# and short, so that reading one costs next to nothing whatever a callback sends
# (`int(Decimal("1e1000000"))` would hold the event loop for seconds).
_PLAIN_DECIMAL = re.compile(r"[+-]?[0-9]{1,15}(?:\.[0-9]{0,15})?", re.ASCII)
# Durations longer than a day and prices beyond this are not a real call's; not applied.
MAX_DURATION_S = 86_400
MAX_PRICE = Decimal(100_000)
# Times outside this window are not a real call's (and some, once in UTC, leave the
# years the database can store): not applied. Exotel's "no time" marker, 1970-01-01
# 05:30:00 (epoch zero in IST), falls before it too.
EARLIEST_TIME = datetime(2000, 1, 1, tzinfo=UTC)
LATEST_TIME_AHEAD = timedelta(days=1)
_EARLIEST_TIMESTAMP = EARLIEST_TIME.timestamp()
_LATEST_AHEAD_S = LATEST_TIME_AHEAD.total_seconds()
# Longer than any ISO 8601 time with an offset and microseconds.
_MAX_TIME_TEXT = 40
# The sizes of the columns these values are stored in (app/calls/models.py): a longer
# value is not a real one, and storing it would fail, and with it the whole update.
SID_CHARS = 64
WORD_CHARS = 32


def _blank_to_none(value: Any) -> Any:
    if isinstance(value, str) and not value.strip():
        return None
    if isinstance(value, str) and value.strip().lower() in {"null", "none"}:
        return None
    return value


def _storable_text(value: Any) -> Any:
    """Text Postgres can store, or None: no NUL, no lone surrogate (JSON's `\\ud800`)."""
    value = _blank_to_none(value)
    if not isinstance(value, str):
        return value
    if "\x00" in value:
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return value


def _short_text(max_chars: int) -> BeforeValidator:
    """Storable text of at most `max_chars` characters; a longer value is not said."""

    def validate(value: Any) -> Any:
        value = _storable_text(value)
        if isinstance(value, str) and len(value.strip()) > max_chars:
            return None
        return value.strip() if isinstance(value, str) else value

    return BeforeValidator(validate)


def _plain_decimal(value: Any) -> Decimal | None:
    """A number in bounded time: plain decimals only; anything else is None."""
    value = _blank_to_none(value)
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | Decimal):
        # Compared as a number: str() of a huge int is itself slow (and refused), and a
        # small Decimal prints with an exponent ("1E-7").
        number = Decimal(value)
        return number if number.is_finite() and abs(number) < 10**15 else None
    text = str(value).strip() if isinstance(value, str | float) else ""
    if not _PLAIN_DECIMAL.fullmatch(text):
        return None
    return Decimal(text)


def _lenient_int(value: Any) -> int | None:
    number = _plain_decimal(value)
    return int(number) if number is not None else None


def _seconds(value: Any) -> int | None:
    """A duration in seconds, 0..MAX_DURATION_S; None outside it."""
    seconds = _lenient_int(value)
    return seconds if seconds is not None and 0 <= seconds <= MAX_DURATION_S else None


def _lenient_decimal(value: Any) -> Decimal | None:
    """A price, 0..MAX_PRICE; None outside it."""
    number = _plain_decimal(value)
    return number if number is not None and 0 <= number <= MAX_PRICE else None


def _exotel_time(value: Any) -> datetime | None:
    value = _blank_to_none(value)
    if value is None:
        return None
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str) and len(value) <= _MAX_TIME_TEXT:
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError:
            return None
    else:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=EXOTEL_TIMEZONE)
    # In seconds since the epoch (an aware datetime's timestamp cannot overflow, even in
    # year 1 or 9999): a callback holds four times, each read twice.
    if not _EARLIEST_TIMESTAMP <= parsed.timestamp() <= time.time() + _LATEST_AHEAD_S:
        return None
    return parsed


def _answered_by(value: Any) -> Any:
    """`HUMAN`, `Human`, `human` -> "human"; `NotSure`, `not_sure` -> "not-sure"; `NA` -> None.

    A word Exotel may add later is kept, lowercased, rather than lost, if it fits its
    column."""
    value = _storable_text(value)
    if not isinstance(value, str):
        return value
    word = value.strip().lower()
    if word in {"na", "n/a", "not applicable"} or len(word) > WORD_CHARS:
        return None
    return ANSWERED_BY.get(word.replace("-", "").replace("_", "").replace(" ", ""), word)


def _status_word(value: Any) -> str | None:
    """One of Exotel's status words, lowercased; any other word is None."""
    value = _blank_to_none(value)
    if not isinstance(value, str):
        return None
    word = value.strip().lower()
    return word if word in CALL_STATUSES else None


def _lower_or_none(value: Any) -> Any:
    value = _storable_text(value)
    return value.strip().lower() if isinstance(value, str) else value


OptionalText = Annotated[str | None, BeforeValidator(_storable_text)]
OptionalSid = Annotated[str | None, _short_text(SID_CHARS)]
OptionalShortText = Annotated[str | None, _short_text(WORD_CHARS)]
OptionalWord = Annotated[str | None, BeforeValidator(_lower_or_none)]
OptionalStatus = Annotated[str | None, BeforeValidator(_status_word)]
OptionalInt = Annotated[int | None, BeforeValidator(_lenient_int)]
OptionalSeconds = Annotated[int | None, BeforeValidator(_seconds)]
OptionalDecimal = Annotated[Decimal | None, BeforeValidator(_lenient_decimal)]
ExotelTime = Annotated[datetime | None, BeforeValidator(_exotel_time)]
AnsweredBy = Annotated[str | None, BeforeValidator(_answered_by)]


class _ExotelModel(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)


class LegUpdate(_ExotelModel):
    """One leg as Exotel reports it: leg 0 is From, leg 1 is To."""

    leg: int
    status: OptionalStatus = None
    on_call_duration: OptionalSeconds = None
    answered_by: AnsweredBy = None


def _one_per_leg(legs: tuple[LegUpdate, ...]) -> tuple[LegUpdate, ...]:
    """A leg named twice in one message is taken as first said: one message, one story."""
    seen: set[int] = set()
    first = []
    for leg in legs:
        if leg.leg not in seen:
            seen.add(leg.leg)
            first.append(leg)
    return tuple(first)


class CallUpdate(_ExotelModel):
    """What one message from Exotel (connect answer, callback, call details) says of a call.

    `None` always means "not said", never "erase".
    """

    sid: OptionalSid = None
    status: OptionalStatus = None
    date_created: ExotelTime = None
    date_updated: ExotelTime = None
    start_time: ExotelTime = None
    end_time: ExotelTime = None
    duration: OptionalSeconds = None
    conversation_duration: OptionalSeconds = None
    price: OptionalDecimal = None
    recording_url: OptionalText = None
    # The call's: the first leg's answer that is not `NA` (in practice the To leg's).
    answered_by: AnsweredBy = None
    direction: OptionalShortText = None
    legs: Annotated[tuple[LegUpdate, ...], AfterValidator(_one_per_leg)] = ()

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


class ExotelDetailLeg(_ExotelModel):
    """One of `Details.Legs`: `{"Leg": {"Id": 1, "OnCallDuration": 21}}`, ids from 1."""

    id: int = Field(alias="Id", ge=1, le=MAX_DETAIL_LEGS)
    on_call_duration: OptionalSeconds = Field(None, alias="OnCallDuration")


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

    conversation_duration: OptionalSeconds = Field(None, alias="ConversationDuration")
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
    duration: OptionalSeconds = Field(None, alias="Duration")
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
    value = _storable_text(value)
    return value.strip() if isinstance(value, str) else value


class ExotelCallback(_ExotelModel):
    """A status callback, parsed from multipart, urlencoded or JSON (see callbacks.py).

    Fields carry Exotel's names as aliases. `event_type` and `status` are kept as sent
    (lowercased), for the stored event: Exotel adds event types over time, and an
    unknown word must not make us refuse, and so lose, the callback. `to_update()`
    passes on only Exotel's status words (CALL_STATUSES); another is "not said".
    """

    model_config = ConfigDict(coerce_numbers_to_str=True)

    call_sid: Annotated[str, BeforeValidator(_sid)] = Field(
        alias="CallSid", min_length=1, max_length=64
    )
    event_type: OptionalWord = Field(None, alias="EventType")
    status: OptionalWord = Field(None, alias="Status")
    date_created: ExotelTime = Field(None, alias="DateCreated")
    date_updated: ExotelTime = Field(None, alias="DateUpdated")
    start_time: ExotelTime = Field(None, alias="StartTime")
    end_time: ExotelTime = Field(None, alias="EndTime")
    conversation_duration: OptionalSeconds = Field(None, alias="ConversationDuration")
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
