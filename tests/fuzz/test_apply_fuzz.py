"""`apply_update` fuzzed with sequences of Exotel-shaped updates, in any order, with
duplicates and hostile values: the rules hold whatever arrives (issue 11, items 12, 14, 21).

Invariants, after every update:
- a finished call stays finished, with the first terminal status it was given;
- a stored value is never erased (None is "not said");
- a Sid, once known, never changes;
- a call never ends before it starts;
- `Applied` tells the truth: `changed` exactly when the call changed, the statuses as
  they were and are, `became_terminal` only for the first terminal status;
- the same update again, at once, changes nothing.
"""

from __future__ import annotations

import copy
import dataclasses
import uuid
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from app.calls.apply import apply_update, is_terminal
from app.calls.state import APPLIED_COLUMNS, CallState, LegState
from app.exotel.schemas import CallUpdate, ExotelCallback
from tests.fuzz.exotel_strategies import HOSTILE_TEXT, SID, STATUS_WORDS

IST = ZoneInfo("Asia/Kolkata")
START = datetime(2026, 1, 5, 10, 0, tzinfo=IST)

# Over a few minutes, so that updates' clocks often tie, cross and disagree.
moments = st.integers(min_value=0, max_value=300).map(lambda s: START + timedelta(seconds=s))
hostile = st.sampled_from(HOSTILE_TEXT)
maybe = st.none() | hostile
sids = st.sampled_from([SID, "c5797dcbaaeed7678c4062a4a3ed2f8a"]) | maybe
statuses = st.sampled_from(STATUS_WORDS) | st.sampled_from(["exploded", "COMPLETED"]) | maybe
durations = st.integers(min_value=-5, max_value=100_000) | maybe
prices = st.decimals(min_value=-1, max_value=200_000, places=4) | maybe
texts = st.sampled_from(["outbound-api", "https://rec.example/1.mp3", "x" * 40]) | maybe
answers = st.sampled_from(["human", "Machine", "NA", "NotSure", "y" * 40]) | maybe


@st.composite
def updates(draw: st.DrawFn) -> CallUpdate:
    """One message from Exotel (connect answer, callback or call details), as parsed."""
    legs = [
        {
            "leg": draw(st.integers(min_value=0, max_value=2)),
            "status": draw(statuses),
            "on_call_duration": draw(durations),
            "answered_by": draw(answers),
        }
        for _ in range(draw(st.integers(min_value=0, max_value=2)))
    ]
    fields = {
        "sid": draw(sids),
        "status": draw(statuses),
        "date_created": draw(st.none() | moments),
        "date_updated": draw(st.none() | moments | hostile),
        "start_time": draw(st.none() | moments | hostile),
        "end_time": draw(st.none() | moments | hostile),
        "duration": draw(durations),
        "conversation_duration": draw(durations),
        "price": draw(prices),
        "recording_url": draw(texts),
        "answered_by": draw(answers),
        "direction": draw(texts),
        "legs": legs,
    }
    return CallUpdate.model_validate(fields)


def pending_call() -> CallState:
    return CallState(
        id=uuid.uuid4(),
        sid=None,
        status="pending",
        from_number="+919876543210",
        to_number="+919123456789",
        caller_id="+918047112233",
        created_at=START,
        updated_at=START,
        legs=[LegState(0, "+919876543210"), LegState(1, "+919123456789")],
    )


def values(call: CallState) -> dict[str, Any]:
    return {
        **{name: getattr(call, name) for name in APPLIED_COLUMNS},
        "legs": {leg.leg: dataclasses.asdict(leg) for leg in call.legs},
    }


def never_erased(before: dict[str, Any], after: dict[str, Any]) -> None:
    for name in APPLIED_COLUMNS:
        if name.startswith("error_"):
            continue  # ours, cleared once Exotel names the call
        assert before[name] is None or after[name] is not None, name
    for index, leg in before["legs"].items():
        assert index in after["legs"]
        for name, value in leg.items():
            assert value is None or after["legs"][index][name] is not None, (index, name)


@given(st.lists(updates(), min_size=1, max_size=8), st.lists(st.booleans(), max_size=8))
@settings(max_examples=400, deadline=None)
def test_the_rules_hold_whatever_exotel_says_in_whatever_order(
    sequence: list[CallUpdate], repeat: list[bool]
) -> None:
    call = pending_call()
    first_terminal: str | None = None
    for position, update in enumerate(sequence):
        before = copy.deepcopy(call)
        applied = apply_update(call, update)

        assert applied.previous_status == before.status
        assert applied.status == call.status
        assert applied.changed == (values(call) != values(before))
        assert applied.became_terminal == (first_terminal is None and is_terminal(call.status))
        if first_terminal is not None:
            assert call.status == first_terminal
        elif is_terminal(call.status):
            first_terminal = call.status
        if applied.conflicting:
            assert update.status != call.status
            assert before.exotel_updated_at == call.exotel_updated_at
            assert [leg.status for leg in before.legs] == [
                leg.status for leg in call.legs[: len(before.legs)]
            ]
        never_erased(values(before), values(call))
        assert before.sid is None or call.sid == before.sid
        assert call.start_time is None or call.end_time is None or call.start_time <= call.end_time
        assert [leg.leg for leg in call.legs] == sorted({leg.leg for leg in call.legs})

        if position < len(repeat) and repeat[position]:
            settled = copy.deepcopy(call)
            again = apply_update(call, update)
            assert not again.changed
            assert call == settled


@given(st.sampled_from(STATUS_WORDS), st.sampled_from(STATUS_WORDS), moments, moments)
def test_a_callback_and_a_details_answer_agree_on_the_first_terminal(
    first: str, second: str, first_updated: datetime, second_updated: datetime
) -> None:
    """Through the callback model too: whatever the clocks, the first terminal stands."""
    call = pending_call()
    for status, updated in ((first, first_updated), (second, second_updated)):
        callback = ExotelCallback.model_validate(
            {"CallSid": SID, "Status": status, "DateUpdated": updated.strftime("%Y-%m-%d %H:%M:%S")}
        )
        apply_update(call, callback.to_update())
    if is_terminal(first):
        assert call.status == first
    elif is_terminal(second):
        assert call.status == second
