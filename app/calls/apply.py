"""The one place where something Exotel said changes a stored call.

Connect answers, status callbacks and reconciliation all come through `apply_update`,
so the rules hold whatever order Exotel's messages arrive in:
- a duplicate changes nothing;
- a terminal status is never replaced by a non-terminal one, and always replaces one;
- the first terminal status stands: a message with another one (whatever its
  `DateUpdated`) contradicts what was already relayed as the call's end; it is taken
  as stale (it may still fill gaps, such as a price the first did not have) and flagged
  `conflicting`, for the caller to count;
- otherwise the newest `DateUpdated` wins: an older ("stale") message only fills gaps,
  and says nothing about statuses, the call's or its legs', which it knew before ours;
- a call never ends before it starts: times that would make `end_time` earlier than
  `start_time` are not applied, nor any of a message that ends before its own start;
- an empty value never erases a stored one;
- legs are matched by their index;
- a call Exotel has named (it has a Sid) was placed: it keeps no `error`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from app.calls.state import CallState, LegState
from app.exotel.schemas import TERMINAL_STATUSES, CallUpdate


@dataclass(frozen=True)
class Applied:
    changed: bool
    previous_status: str
    status: str
    # A terminal status other than the call's own: not applied.
    conflicting: bool = False

    @property
    def became_terminal(self) -> bool:
        return self.previous_status not in TERMINAL_STATUSES and self.status in TERMINAL_STATUSES


def is_terminal(status: str) -> bool:
    return status in TERMINAL_STATUSES


def _is_stale(call: CallState, update: CallUpdate) -> bool:
    if is_terminal(call.status) != update.is_terminal:
        # A finished call stays finished, and news that it finished is never old,
        # whatever the two messages' clocks say.
        return is_terminal(call.status)
    if call.exotel_updated_at is None:
        return False
    if update.date_updated is None:
        # Between two reports of the outcome, only a dated one can show it is the newer.
        return update.is_terminal
    return update.date_updated < call.exotel_updated_at


class _Writer:
    def __init__(self, stale: bool) -> None:
        self.stale = stale
        self.changed = False

    def put(self, target: Any, attribute: str, value: Any) -> None:
        if value is None:
            return
        current = getattr(target, attribute)
        if current == value or (self.stale and current is not None):
            return
        setattr(target, attribute, value)
        self.changed = True


def apply_update(call: CallState, update: CallUpdate) -> Applied:
    """Merge `update` into `call` and say what changed."""
    previous_status = call.status
    conflicting = is_terminal(call.status) and update.is_terminal and update.status != call.status
    writer = _Writer(stale=conflicting or _is_stale(call, update))

    if call.sid is None:
        writer.put(call, "sid", update.sid)
    if call.sid is not None and (call.error_status, call.error_code, call.error_message) != (
        None,
        None,
        None,
    ):
        # `error` says why a call is not placed, or not known to be: Exotel has just
        # named it, so it was placed (what preceded stays in the events).
        call.error_status = call.error_code = call.error_message = None
        writer.changed = True
    if not writer.stale:
        writer.put(call, "status", update.status)
        writer.put(call, "exotel_updated_at", update.date_updated)
    if _times_agree(call, update, writer.stale):
        writer.put(call, "start_time", update.start_time)
        writer.put(call, "end_time", update.end_time)
    for attribute in (
        "duration",
        "conversation_duration",
        "price",
        "recording_url",
        "answered_by",
        "direction",
    ):
        writer.put(call, attribute, getattr(update, attribute))
    writer.put(call, "exotel_created_at", update.date_created)

    legs = {leg.leg: leg for leg in call.legs}
    for leg_update in update.legs:
        leg = legs.get(leg_update.leg)
        if leg is None:
            leg = LegState(leg=leg_update.leg, number=_leg_number(call, leg_update.leg))
            call.legs.append(leg)
            call.legs.sort(key=lambda known: known.leg)
            legs[leg.leg] = leg
            writer.changed = True
        if not writer.stale:
            writer.put(leg, "status", leg_update.status)
        writer.put(leg, "on_call_duration", leg_update.on_call_duration)
        writer.put(leg, "answered_by", leg_update.answered_by)

    return Applied(
        changed=writer.changed,
        previous_status=previous_status,
        status=call.status,
        conflicting=conflicting,
    )


def _times_agree(call: CallState, update: CallUpdate, stale: bool) -> bool:
    """Whether the call, with this update's times applied, would start before it ends.

    A message that ends before its own start gives no times at all: were it judged only
    against what it would change, the same message could be refused fresh and taken once
    stale (measured then against the call's start), and a duplicate would change the call.
    """
    if update.start_time and update.end_time and update.start_time > update.end_time:
        return False

    def after_applying(current: datetime | None, said: datetime | None) -> datetime | None:
        if said is None or (stale and current is not None):
            return current
        return said

    start = after_applying(call.start_time, update.start_time)
    end = after_applying(call.end_time, update.end_time)
    return start is None or end is None or start <= end


def _leg_number(call: CallState, index: int) -> str | None:
    return {0: call.from_number, 1: call.to_number}.get(index)
