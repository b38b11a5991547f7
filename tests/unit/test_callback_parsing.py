"""Parsing Exotel's status callbacks from each encoding into one model."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import httpx
import pytest

from app.exotel.callbacks import (
    InvalidCallback,
    UnreadableCallback,
    UnsupportedContentType,
    parse_callback,
)
from app.exotel.schemas import ExotelCallback, LegUpdate
from tests.exotel_callbacks import (
    JSON_SAMPLE,
    SAMPLE_SID,
    Fields,
    as_multipart,
    as_urlencoded,
    form_sample,
)

IST = ZoneInfo("Asia/Kolkata")
SID = SAMPLE_SID
Encoder = Callable[[Fields], tuple[bytes, str]]


def multipart(fields: Fields) -> tuple[bytes, str]:
    request = httpx.Request("POST", "http://callbridge.test", **as_multipart(fields))
    return request.read(), request.headers["content-type"]


def urlencoded(fields: Fields) -> tuple[bytes, str]:
    arguments = as_urlencoded(fields)
    return arguments["content"], arguments["headers"]["content-type"]


async def test_exotels_json_sample() -> None:
    callback = await parse_callback(JSON_SAMPLE, "application/json")

    assert callback == ExotelCallback(
        call_sid=SID,
        event_type="terminal",
        date_created=datetime(2019, 4, 8, 3, 17, 59, tzinfo=IST),
        date_updated=datetime(2019, 4, 8, 3, 18, 35, tzinfo=IST),
        status="no-answer",
        to="+91886799XXXX",
        from_="+91941374XXXX",
        phone_number_sid="0113083XXXX",
        start_time=datetime(2019, 4, 8, 3, 17, 59, tzinfo=IST),
        end_time=datetime(2019, 4, 8, 3, 18, 36, tzinfo=IST),
        direction="outbound-api",
        recording_url="https://s3-ap-southeast-1.amazonaws.com/exotelrecordings/<your_sid>/"
        f"{SID}.mp3",
        conversation_duration=32,
        legs=(
            LegUpdate(leg=0, status="completed", on_call_duration=41),
            LegUpdate(leg=1, status="completed", on_call_duration=32),
        ),
    )


@pytest.mark.parametrize("encode", [multipart, urlencoded])
async def test_exotels_form_sample_with_a_leg_never_attempted(encode: Encoder) -> None:
    body, content_type = encode(form_sample())

    callback = await parse_callback(body, content_type)

    assert callback.call_sid == SID
    assert callback.event_type == "terminal"
    assert callback.status == "no-answer"
    assert callback.recording_url is None
    assert callback.conversation_duration == 0
    assert callback.date_updated == datetime(2019, 4, 7, 21, 41, 28, tzinfo=UTC)
    assert callback.legs == (
        LegUpdate(leg=0, status="no-answer", on_call_duration=0),
        LegUpdate(leg=1, status=None, on_call_duration=0),
    )


async def test_form_legs_are_matched_by_index_in_any_order() -> None:
    body, content_type = multipart(
        [
            ("CallSid", SID),
            ("Legs[1][AnsweredBy]", "Human"),
            ("Legs[0][Status]", "completed"),
            ("Legs[1][Status]", "COMPLETED"),
            ("Legs[1][Unknown]", "ignored"),
        ]
    )
    callback = await parse_callback(body, content_type)
    assert callback.legs == (
        LegUpdate(leg=0, status="completed"),
        LegUpdate(leg=1, status="completed", answered_by="Human"),
    )
    assert callback.to_update().answered_by == "human"  # normalised: HUMAN, Human, human


async def test_json_nulls_and_empty_strings_are_no_value() -> None:
    body = json.dumps(
        {
            "CallSid": SID,
            "Status": "completed",
            "RecordingUrl": None,
            "CustomField": "",
            "EndTime": "",
            "ConversationDuration": None,
            "Legs": [{"Status": "completed", "OnCallDuration": "41"}, None, {"Status": None}],
        }
    ).encode()
    callback = await parse_callback(body, "application/json; charset=utf-8")
    assert (callback.recording_url, callback.custom_field, callback.end_time) == (None,) * 3
    assert callback.conversation_duration is None
    assert callback.legs == (LegUpdate(leg=0, status="completed", on_call_duration=41),)


async def test_unknown_statuses_and_event_types_are_kept() -> None:
    body = json.dumps({"CallSid": SID, "Status": "Ringing", "EventType": "Ringing"}).encode()
    callback = await parse_callback(body, "application/json")
    assert (callback.status, callback.event_type) == ("ringing", "ringing")


async def test_numbers_sent_as_json_numbers_are_read_as_text() -> None:
    body = json.dumps({"CallSid": 12345, "PhoneNumberSid": 8047112233}).encode()
    callback = await parse_callback(body, "application/json")
    assert (callback.call_sid, callback.phone_number_sid) == ("12345", "8047112233")


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"{not json", "application/json"),
        (b"\xff\xfe\x00", "application/json"),
        (b'["CallSid"]', "application/json"),
        (b"CallSid=abc", "multipart/form-data"),
        (b"no boundary here", "multipart/form-data; boundary=b"),
        (
            b'--b\r\nContent-Disposition: form-data; name="f"; filename="x"\r\n\r\nx\r\n--b--\r\n',
            "multipart/form-data; boundary=b",
        ),
    ],
)
async def test_unreadable_bodies(body: bytes, content_type: str) -> None:
    with pytest.raises(UnreadableCallback):
        await parse_callback(body, content_type)


@pytest.mark.parametrize(
    "fields",
    [
        {"Status": "completed"},
        {"CallSid": "", "Status": "completed"},
        {"CallSid": None},
        {"CallSid": "x" * 65},
        {"CallSid": {"nested": True}},
        {"CallSid": "abc\x00"},
    ],
)
async def test_a_callback_without_a_usable_sid_is_invalid(fields: dict[str, object]) -> None:
    with pytest.raises(InvalidCallback) as caught:
        await parse_callback(json.dumps(fields).encode(), "application/json")
    assert [error["field"] for error in caught.value.errors] == ["CallSid"]


@pytest.mark.parametrize("encode", [multipart, urlencoded])
async def test_a_form_callback_without_sid_is_invalid(encode: Encoder) -> None:
    body, content_type = encode([("Status", "completed")])
    with pytest.raises(InvalidCallback):
        await parse_callback(body, content_type)


@pytest.mark.parametrize("content_type", [None, "", "text/plain", "application/xml"])
async def test_other_content_types_are_unsupported(content_type: str | None) -> None:
    with pytest.raises(UnsupportedContentType):
        await parse_callback(JSON_SAMPLE, content_type)
