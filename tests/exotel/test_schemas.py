"""Exotel's answers as the live API sends them (facts file, "What the live API does"),
read into one CallUpdate."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from app.exotel.schemas import CallUpdate, ExotelCall, ExotelCallback, LegUpdate

DETAILS: dict[str, Any] = {
    "Sid": "a" * 32,
    "Status": "completed",
    "To": "09123456789",
    "From": "09876543210",
    "StartTime": "2026-11-27 10:00:00",
    "EndTime": "2026-11-27 10:01:05",
    "Duration": "65",
    "Price": "1.500",
    "AnsweredBy": "human",
    "Details": {
        "ConversationDuration": 41,
        "Leg1Status": "completed",
        "Leg2Status": "completed",
        "Legs": [
            {"Leg": {"Id": 1, "OnCallDuration": 52}},
            {"Leg": {"Id": 2, "OnCallDuration": 41}},
        ],
    },
}


def details(**changes: Any) -> CallUpdate:
    return ExotelCall.model_validate({**DETAILS, **changes}).to_update()


def test_call_details_legs_give_each_legs_status_and_duration() -> None:
    update = details()

    assert update.legs == (
        LegUpdate(leg=0, status="completed", on_call_duration=52),
        LegUpdate(leg=1, status="completed", on_call_duration=41),
    )
    assert (update.duration, update.price, update.conversation_duration) == (
        65,
        Decimal("1.500"),
        41,
    )


def test_a_never_attempted_leg_has_its_duration_but_no_status() -> None:
    update = details(
        Status="no-answer",
        Details={
            "Leg1Status": "no-answer",
            "Leg2Status": None,
            "Legs": [{"Leg": {"Id": 1, "OnCallDuration": 0}}, {"Leg": {"Id": 2}}],
        },
    )

    assert update.legs == (LegUpdate(leg=0, status="no-answer", on_call_duration=0),)


@pytest.mark.parametrize(
    "legs",
    [
        "not a list",
        [{"Leg": {"Id": "x"}}, {"Leg": {"Id": 99}}, "junk", {"Leg": None}],
    ],
)
def test_unreadable_detail_legs_are_dropped_not_the_answer(legs: object) -> None:
    update = details(Details={"Leg1Status": "completed", "Legs": legs})

    assert update.legs == (LegUpdate(leg=0, status="completed"),)
    assert update.status == "completed"


def test_the_empty_time_marker_is_no_time() -> None:
    update = details(EndTime="1970-01-01 05:30:00", StartTime="1970-01-01 05:30:00")

    assert (update.end_time, update.start_time) == (None, None)


def test_ringing_from_call_details_is_kept() -> None:
    assert details(Status="ringing").status == "ringing"


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        ("HUMAN", "human"),
        ("Human", "human"),
        ("Machine", "machine"),
        ("NotSure", "not-sure"),
        ("not_sure", "not-sure"),
        ("NA", None),
        ("na", None),
        ("", None),
        ("Voicemail", "voicemail"),
    ],
)
def test_answered_by_is_normalised_and_na_means_nobody(sent: str, kept: str | None) -> None:
    assert details(AnsweredBy=sent).answered_by == kept
    assert LegUpdate(leg=1, answered_by=sent).answered_by == kept


def test_a_callbacks_answered_by_is_the_first_leg_that_is_not_na() -> None:
    callback = ExotelCallback.model_validate(
        {
            "CallSid": "a" * 32,
            "Status": "completed",
            "Legs": [
                {"leg": 0, "status": "completed", "answered_by": "NA"},
                {"leg": 1, "status": "completed", "answered_by": "HUMAN"},
            ],
        }
    )

    update = callback.to_update()

    assert update.answered_by == "human"
    assert [leg.answered_by for leg in update.legs] == [None, "human"]


def test_a_busy_call_is_answered_by_nobody() -> None:
    callback = ExotelCallback.model_validate(
        {
            "CallSid": "a" * 32,
            "Status": "busy",
            "Legs": [
                {"leg": 0, "status": "completed", "answered_by": "NA"},
                {"leg": 1, "status": "busy"},
            ],
        }
    )

    assert callback.to_update().answered_by is None
