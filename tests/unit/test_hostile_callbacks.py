"""Hostile status callbacks: the parser stays fast and total, and bad values are "not said".

Each payload here once froze the event loop, answered 500, or put a value into a call
that the database, the JSON layer or a reader could not take (issue 11, items 1, 2, 7,
13, 14 and 18).
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy import String

from app.calls.models import Call, Leg
from app.exotel.callbacks import InvalidCallback, UnreadableCallback, parse_callback
from app.exotel.schemas import (
    SID_CHARS,
    WORD_CHARS,
    CallUpdate,
    ExotelCall,
    ExotelCallback,
    LegUpdate,
)
from tests.exotel_callbacks import SAMPLE_SID as SID
from tests.exotel_callbacks import Fields, as_urlencoded

IN_RANGE_TIME = "2026-01-05 10:00:00"


async def form_callback(fields: Fields) -> ExotelCallback:
    arguments = as_urlencoded([("CallSid", SID), *fields])
    return await parse_callback(arguments["content"], arguments["headers"]["content-type"])


async def json_callback(body: str | bytes) -> ExotelCallback:
    return await parse_callback(
        body.encode() if isinstance(body, str) else body, "application/json"
    )


async def test_a_huge_exponent_is_refused_in_bounded_time() -> None:
    started = time.perf_counter()
    callbacks = [
        await form_callback([("ConversationDuration", "1e100000")]),
        await json_callback(f'{{"CallSid": "{SID}", "ConversationDuration": "9e99999"}}'),
        await form_callback([("Legs[0][OnCallDuration]", "1E100000")]),
    ]
    elapsed = time.perf_counter() - started

    assert [c.conversation_duration for c in callbacks[:2]] == [None, None]
    assert callbacks[2].legs == (LegUpdate(leg=0),)
    assert elapsed < 0.05


async def test_a_long_string_of_digits_is_not_a_number() -> None:
    callback = await form_callback([("ConversationDuration", "9" * 20_000)])
    assert callback.conversation_duration is None


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("0", 0), ("41", 41), (" 41 ", 41), ("1.500", 1), ("86400", 86400), ("86401", None)],
)
async def test_durations_outside_a_day_are_not_applied(value: str, seconds: int | None) -> None:
    callback = await form_callback([("ConversationDuration", value)])
    assert callback.conversation_duration == seconds


@pytest.mark.parametrize("value", ["-5", "-1", "-0.5e1", "Infinity", "NaN", "0x10", "1_000"])
async def test_negative_and_odd_durations_are_not_applied(value: str) -> None:
    callback = await form_callback(
        [("ConversationDuration", value), ("Legs[0][OnCallDuration]", value)]
    )
    assert callback.conversation_duration is None
    assert callback.legs == (LegUpdate(leg=0),)


@pytest.mark.parametrize(
    ("value", "price"),
    [
        ("1.500", Decimal("1.500")),
        ("0", Decimal(0)),
        ("100000", Decimal(100000)),
        ("100000.01", None),
        ("-1", None),
        ("1e10", None),
        ("Infinity", None),
        ("NaN", None),
    ],
)
def test_prices_outside_a_sane_range_are_not_applied(value: str, price: Decimal | None) -> None:
    call = ExotelCall.model_validate({"Sid": SID, "Price": value, "Duration": "-3"})
    assert call.to_update().price == price
    assert call.to_update().duration is None


@pytest.mark.parametrize(
    "value",
    [
        "0001-01-01 00:00:00",  # before year 1 once in UTC
        "9999-12-31 23:59:59",
        "9999-12-31T23:59:59-12:00",  # after year 9999 once in UTC
        "1970-01-01 05:30:00",  # Exotel's "no time"
        "1999-12-31 23:59:59+00:00",
        (datetime.now(UTC) + timedelta(days=2)).isoformat(),
        "2026-01-05 10:00:00" + " " * 100,
    ],
)
async def test_times_outside_a_sane_window_are_not_applied(value: str) -> None:
    callback = await form_callback(
        [("EndTime", value), ("StartTime", value), ("DateUpdated", value)]
    )
    update = callback.to_update()
    assert (update.end_time, update.start_time, update.date_updated) == (None, None, None)


async def test_times_inside_the_window_are_applied() -> None:
    soon = datetime.now(UTC) + timedelta(hours=12)
    callback = await form_callback([("EndTime", IN_RANGE_TIME), ("StartTime", soon.isoformat())])
    assert callback.end_time == datetime(2026, 1, 5, 4, 30, tzinfo=UTC)
    assert callback.start_time == soon


@pytest.mark.parametrize(
    "body",
    [
        f'{{"CallSid": "{SID}", "ConversationDuration": Infinity, "Status": "completed"}}',
        f'{{"CallSid": "{SID}", "ConversationDuration": -Infinity, "Status": "completed"}}',
        f'{{"CallSid": "{SID}", "ConversationDuration": NaN, "Status": "completed"}}',
        f'{{"CallSid": "{SID}", "ConversationDuration": 1e999, "Status": "completed"}}',
        f'{{"CallSid": "{SID}", "ConversationDuration": "Infinity", "Status": "completed"}}',
        f'{{"CallSid": "{SID}", "ConversationDuration": 1{"0" * 5000}, "Status": "completed"}}',
    ],
)
async def test_numbers_json_cannot_hold_are_not_said(body: str) -> None:
    callback = await json_callback(body)
    assert callback.conversation_duration is None
    assert callback.status == "completed"


async def test_a_nul_in_the_status_is_not_said() -> None:
    callback = await form_callback([("Status", "completed\x00"), ("RecordingUrl", "a\x00b")])
    assert callback.to_update().status is None
    assert callback.recording_url is None


async def test_a_lone_surrogate_in_a_json_string_is_not_said() -> None:
    body = (
        f'{{"CallSid": "{SID}", "Status": "completed", "RecordingUrl": "https://x/\\ud800", '
        '"EventType": "\\udfff", "Legs": [{"Status": "busy", "AnsweredBy": "\\ud800"}]}'
    )
    callback = await json_callback(body)
    assert callback.status == "completed"
    assert (callback.recording_url, callback.event_type) == (None, None)
    assert callback.legs == (LegUpdate(leg=0, status="busy"),)


@pytest.mark.parametrize(
    "body",
    [
        "[" * 20_000 + "]" * 20_000,
        f'{{"CallSid": "{SID}", "Status": {"[" * 20_000 + "]" * 20_000}}}',
        f'{{"CallSid": "{SID}", "Legs": {"[" * 20_000 + "]" * 20_000}}}',
    ],
)
async def test_json_nested_thousands_deep_is_unreadable(body: str) -> None:
    with pytest.raises(UnreadableCallback):
        await json_callback(body)


async def test_values_of_the_wrong_shape_are_not_said_and_the_rest_counts() -> None:
    body = json.dumps(
        {
            "CallSid": SID,
            "Status": {"nested": True},
            "EventType": ["terminal"],
            "RecordingUrl": "https://recordings.example/1.mp3",
            "StartTime": 17,
            "EndTime": IN_RANGE_TIME,
            "Legs": [{"Status": ["busy"], "OnCallDuration": "41"}, "completed"],
        }
    )
    callback = await json_callback(body)
    assert (callback.status, callback.event_type, callback.start_time) == (None, None, None)
    assert callback.recording_url == "https://recordings.example/1.mp3"
    assert callback.end_time is not None
    assert callback.legs == (LegUpdate(leg=0, on_call_duration=41),)


@pytest.mark.parametrize("legs", [{"0": {"Status": "busy"}}, "busy", 3, [[]], None])
async def test_legs_of_another_shape_say_nothing(legs: object) -> None:
    callback = await json_callback(json.dumps({"CallSid": SID, "Status": "busy", "Legs": legs}))
    assert (callback.status, callback.legs) == ("busy", ())


@pytest.mark.parametrize("word", ["exploded", "\xff\xfe", "completed\u200b", "in progress"])
async def test_unknown_status_words_are_not_said_but_kept_for_the_event(word: str) -> None:
    callback = await form_callback([("Status", word), ("Legs[0][Status]", word)])
    update = callback.to_update()
    assert update.status is None
    assert update.legs == (LegUpdate(leg=0),)
    # The stored event keeps what was said (the raw body keeps it exactly).
    assert callback.status == word.strip().lower()


@pytest.mark.parametrize(
    "word",
    ["queued", "ringing", "in-progress", "completed", "failed", "busy", "no-answer", "canceled"],
)
async def test_exotels_status_words_are_applied_in_any_case(word: str) -> None:
    callback = await form_callback([("Status", word.upper()), ("Legs[1][Status]", f" {word} ")])
    assert callback.to_update().status == word
    assert callback.legs == (LegUpdate(leg=1, status=word),)


async def test_only_the_two_legs_of_a_connect_call_are_read_from_a_form() -> None:
    fields: Fields = [(f"Legs[{index}][Status]", "busy") for index in range(10)]
    fields += [("Legs[\u0663][Status]", "busy"), ("Legs[99999999999999999999][Status]", "busy")]
    fields += [("Legs[1][OnCallDuration]", "-3")]
    callback = await form_callback(fields)
    assert callback.legs == (LegUpdate(leg=0, status="busy"), LegUpdate(leg=1, status="busy"))


async def test_only_the_two_legs_of_a_connect_call_are_read_from_json() -> None:
    legs = [{"Status": "busy", "OnCallDuration": index} for index in range(10_000)]
    callback = await json_callback(json.dumps({"CallSid": SID, "Legs": legs}))
    assert callback.legs == (
        LegUpdate(leg=0, status="busy", on_call_duration=0),
        LegUpdate(leg=1, status="busy", on_call_duration=1),
    )


def multipart_body(fields: Fields) -> tuple[bytes, str]:
    request = httpx.Request(
        "POST", "http://callbridge.test", files=[(name, (None, value)) for name, value in fields]
    )
    return request.read(), request.headers["content-type"]


@pytest.mark.parametrize("cut", [len(b"-\r\n"), len(b"--\r\n"), len(b"--\r\n") + 3])
async def test_a_multipart_body_without_its_closing_boundary_is_unreadable(cut: int) -> None:
    body, content_type = multipart_body([("CallSid", SID), ("Status", "completed")])
    assert body.endswith(b"--\r\n")

    with pytest.raises(UnreadableCallback, match="closing boundary"):
        await parse_callback(body[:-cut], content_type)
    assert (await parse_callback(body, content_type)).status == "completed"


async def test_a_multipart_body_with_an_epilogue_is_whole() -> None:
    body, content_type = multipart_body([("CallSid", SID), ("Status", "busy")])
    assert (await parse_callback(body + b"epilogue", content_type)).status == "busy"


async def test_a_sid_with_a_nul_is_invalid() -> None:
    with pytest.raises(InvalidCallback):
        await form_callback([("CallSid", "abc\x00")])


def test_values_read_once_survive_being_validated_again() -> None:
    # to_update() validates what the first model already read: a small price prints as
    # "1E-7", which is no plain decimal as text.
    call = ExotelCall.model_validate({"Sid": SID, "Price": "0.0000001", "Duration": 41})
    assert (call.to_update().price, call.to_update().duration) == (Decimal("1E-7"), 41)


def test_text_longer_than_its_column_is_not_said() -> None:
    """The bounds the parser keeps are the sizes of the columns the values go to."""

    def length(column: Any) -> int | None:
        assert isinstance(column.type, String)
        return column.type.length

    columns = Call.__table__.c
    assert length(columns.sid) == SID_CHARS
    assert length(columns.direction) == length(columns.answered_by) == WORD_CHARS
    assert length(Leg.__table__.c.answered_by) == WORD_CHARS

    update = CallUpdate(
        sid="s" * (SID_CHARS + 1),
        direction="d" * (WORD_CHARS + 1),
        answered_by="a" * (WORD_CHARS + 1),
        legs=(LegUpdate(leg=1, answered_by="a" * (WORD_CHARS + 1)),),
    )
    assert (update.sid, update.direction, update.answered_by) == (None, None, None)
    assert update.legs[0].answered_by is None
    fitting = CallUpdate(sid="s" * SID_CHARS, direction=" outbound-api ", answered_by="Human")
    assert (fitting.sid, fitting.direction, fitting.answered_by) == (
        "s" * SID_CHARS,
        "outbound-api",
        "human",
    )
