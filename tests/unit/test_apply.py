"""The apply rules, on in-memory calls: no database, no HTTP."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from app.calls.apply import apply_update
from app.calls.schemas import CallOut
from app.calls.state import CallState, LegState
from app.exotel.schemas import CallUpdate, LegUpdate

IST = ZoneInfo("Asia/Kolkata")
SID = "492205107c5fb48f4ac25d1f77759339"
CREATED = datetime(2019, 4, 8, 3, 17, 59, tzinfo=IST)
ENDED = CREATED + timedelta(seconds=37)
RECORDING = f"https://recordings.example.com/{SID}.mp3"


def pending_call() -> CallState:
    return CallState(
        id=uuid.uuid4(),
        sid=None,
        status="pending",
        from_number="+919876543210",
        to_number="+919123456789",
        caller_id="+918047112233",
        created_at=CREATED,
        updated_at=CREATED,
        legs=[LegState(leg=0, number="+919876543210"), LegState(leg=1, number="+919123456789")],
    )


def connect_answer(**changes: object) -> CallUpdate:
    values: dict[str, object] = {
        "sid": SID,
        "status": "in-progress",
        "date_created": CREATED,
        "date_updated": CREATED,
        "start_time": CREATED,
        "direction": "outbound-api",
    }
    return CallUpdate.model_validate(values | changes)


def terminal(**changes: object) -> CallUpdate:
    values: dict[str, object] = {
        "sid": SID,
        "status": "completed",
        "date_updated": ENDED,
        "end_time": ENDED,
        "conversation_duration": 32,
        "recording_url": RECORDING,
        "legs": (
            LegUpdate(leg=0, status="completed", on_call_duration=41),
            LegUpdate(leg=1, status="completed", on_call_duration=32),
        ),
    }
    return CallUpdate.model_validate(values | changes)


def snapshot(call: CallState) -> dict[str, object]:
    return dataclasses.asdict(call)


def test_connect_answer_moves_a_pending_call_on() -> None:
    call = pending_call()
    applied = apply_update(call, connect_answer())
    assert applied.changed
    assert not applied.became_terminal
    assert (call.sid, call.status, call.start_time) == (SID, "in-progress", CREATED)


def test_terminal_update_finishes_the_call_and_its_legs() -> None:
    call = pending_call()
    apply_update(call, connect_answer())
    applied = apply_update(call, terminal())
    assert applied.became_terminal
    assert (applied.previous_status, applied.status) == ("in-progress", "completed")
    assert (call.end_time, call.conversation_duration, call.recording_url) == (
        ENDED,
        32,
        RECORDING,
    )
    assert [(leg.status, leg.on_call_duration) for leg in call.legs] == [
        ("completed", 41),
        ("completed", 32),
    ]


def test_a_duplicate_changes_nothing() -> None:
    call = pending_call()
    apply_update(call, terminal())
    before = snapshot(call)
    for _ in range(2):
        applied = apply_update(call, terminal())
        assert not applied.changed
        assert not applied.became_terminal
    assert snapshot(call) == before


def test_a_stale_answered_after_completed_changes_nothing() -> None:
    call = pending_call()
    apply_update(call, terminal(legs=(LegUpdate(leg=0, status="no-answer"),)))
    before = snapshot(call)
    answered = CallUpdate(
        sid=SID,
        status="in-progress",
        date_updated=CREATED + timedelta(seconds=10),
        legs=(LegUpdate(leg=0, status="in-progress"), LegUpdate(leg=1, status="in-progress")),
    )
    applied = apply_update(call, answered)
    assert not applied.changed
    assert snapshot(call) == before
    assert call.status == "completed"
    assert [leg.status for leg in call.legs] == ["no-answer", None]


def test_a_connect_answer_after_the_terminal_callback_only_fills_gaps() -> None:
    call = pending_call()
    apply_update(call, terminal())
    applied = apply_update(call, connect_answer(end_time=CREATED, recording_url="https://old"))
    assert applied.changed
    assert not applied.became_terminal
    assert (call.status, call.exotel_updated_at) == ("completed", ENDED)
    assert (call.end_time, call.recording_url) == (ENDED, RECORDING)
    assert (call.start_time, call.direction, call.exotel_created_at) == (
        CREATED,
        "outbound-api",
        CREATED,
    )


def test_a_terminal_status_wins_over_a_running_one_whatever_the_clocks() -> None:
    call = pending_call()
    apply_update(call, connect_answer(date_updated=ENDED + timedelta(minutes=5)))
    applied = apply_update(call, terminal())
    assert applied.became_terminal
    assert call.status == "completed"


def test_the_first_terminal_status_stands() -> None:
    call = pending_call()
    apply_update(call, terminal(status="busy"))
    before = snapshot(call)

    for date_updated in (ENDED - timedelta(seconds=1), None, ENDED + timedelta(minutes=5)):
        conflicting = apply_update(
            call,
            terminal(
                status="completed",
                date_updated=date_updated,
                conversation_duration=99,
                legs=(LegUpdate(leg=1, status="completed", on_call_duration=99),),
            ),
        )
        assert conflicting.conflicting
        assert not conflicting.changed
        assert not conflicting.became_terminal
        assert snapshot(call) == before
    assert call.status == "busy"


def test_a_conflicting_terminal_update_only_fills_gaps() -> None:
    """Exotel's call details may name another outcome than its callback did; the price they
    bring, which the callback could not, is still wanted."""
    call = pending_call()
    apply_update(call, terminal(status="no-answer"))
    details = apply_update(
        call, terminal(status="completed", price="1.5", conversation_duration=99)
    )
    assert details.conflicting
    assert details.changed
    assert (call.status, call.price, call.conversation_duration) == (
        "no-answer",
        Decimal("1.5"),
        32,
    )
    assert call.exotel_updated_at == ENDED


def test_the_same_terminal_status_again_is_no_conflict() -> None:
    call = pending_call()
    apply_update(call, terminal(recording_url=None))
    later = apply_update(call, terminal(date_updated=ENDED + timedelta(seconds=5)))
    assert not later.conflicting
    assert later.changed
    assert (call.status, call.recording_url) == ("completed", RECORDING)


def test_a_call_never_ends_before_it_starts() -> None:
    call = pending_call()
    apply_update(call, connect_answer())
    early_end = apply_update(call, terminal(end_time=CREATED - timedelta(seconds=1)))
    assert early_end.became_terminal
    assert call.end_time is None

    call = pending_call()
    backwards = apply_update(
        call, terminal(start_time=ENDED, end_time=ENDED - timedelta(seconds=30))
    )
    assert backwards.became_terminal
    assert (call.start_time, call.end_time) == (None, None)

    call = pending_call()
    apply_update(call, terminal())
    apply_update(call, connect_answer(start_time=ENDED + timedelta(seconds=1), status=None))
    assert (call.start_time, call.end_time) == (None, ENDED)
    apply_update(call, connect_answer(status=None))
    assert (call.start_time, call.end_time) == (CREATED, ENDED)


def test_a_message_that_ends_before_its_own_start_gives_no_times_however_often_it_comes() -> None:
    """Once applied, the call is finished and the undated message stale: its end would
    then be measured against the call's start, not its own, and taken the second time."""
    call = pending_call()
    apply_update(call, connect_answer())
    backwards = terminal(
        date_updated=None, start_time=CREATED + timedelta(seconds=1), end_time=CREATED
    )
    assert apply_update(call, backwards).became_terminal
    settled = snapshot(call)

    again = apply_update(call, backwards)

    assert not again.changed
    assert snapshot(call) == settled
    assert (call.start_time, call.end_time) == (CREATED, None)


def test_running_statuses_follow_date_updated() -> None:
    call = pending_call()
    apply_update(
        call, connect_answer(status="in-progress", date_updated=CREATED + timedelta(seconds=9))
    )
    stale = apply_update(call, connect_answer(status="queued"))
    assert not stale.changed
    assert call.status == "in-progress"


def test_an_empty_value_never_erases_a_stored_one() -> None:
    call = pending_call()
    apply_update(call, terminal())
    emptied = terminal(
        recording_url=None,
        end_time=None,
        conversation_duration=None,
        legs=(LegUpdate(leg=0), LegUpdate(leg=1, status=None, on_call_duration=None)),
    )
    assert emptied.recording_url is None
    applied = apply_update(call, emptied)
    assert not applied.changed
    assert (call.recording_url, call.end_time, call.conversation_duration) == (
        RECORDING,
        ENDED,
        32,
    )
    assert [leg.status for leg in call.legs] == ["completed", "completed"]


def test_blank_strings_from_exotel_are_no_value() -> None:
    call = pending_call()
    apply_update(call, terminal())
    applied = apply_update(call, CallUpdate.model_validate({"sid": SID, "recording_url": ""}))
    assert not applied.changed
    assert call.recording_url == RECORDING


def test_legs_are_upserted_by_index() -> None:
    call = pending_call()
    apply_update(call, terminal(legs=(LegUpdate(leg=1, status="busy", on_call_duration=0),)))
    apply_update(
        call,
        terminal(
            date_updated=ENDED + timedelta(seconds=1), legs=(LegUpdate(leg=2, status="completed"),)
        ),
    )
    assert [(leg.leg, leg.number, leg.status) for leg in call.legs] == [
        (0, "+919876543210", None),
        (1, "+919123456789", "busy"),
        (2, None, "completed"),
    ]


def test_a_missing_leg_gets_its_number_from_the_call() -> None:
    call = pending_call()
    call.legs = []
    apply_update(call, terminal())
    assert [(leg.leg, leg.number) for leg in call.legs] == [
        (0, "+919876543210"),
        (1, "+919123456789"),
    ]


def test_a_stored_sid_is_never_replaced() -> None:
    call = pending_call()
    apply_update(call, connect_answer())
    apply_update(call, terminal(sid="another-sid"))
    assert call.sid == SID


def test_a_call_exotel_names_keeps_no_error() -> None:
    call = pending_call()
    call.status, call.error_message = "unknown", "No answer from Exotel after sending: ReadTimeout"
    applied = apply_update(call, terminal())
    assert applied.changed
    assert (call.sid, call.status) == (SID, "completed")
    assert CallOut.from_state(call).error is None


def test_a_leg_named_twice_in_one_message_is_taken_as_first_said() -> None:
    update = terminal(
        legs=(
            LegUpdate(leg=1, status="completed", answered_by="human"),
            LegUpdate(leg=1, status="busy", answered_by="machine"),
        )
    )
    assert update.legs == (LegUpdate(leg=1, status="completed", answered_by="human"),)
    call = pending_call()
    apply_update(call, update)
    assert not apply_update(call, update).changed
