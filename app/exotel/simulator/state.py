"""A simulated call: what was asked (immutable), and what Exotel would say of it at any moment.

Nothing here changes as a call plays: its state is a function of its plan and the
clock. `created_at` is the real time of the connect request; from then on simulated
seconds pass `speed` times faster than real ones. So any process holding the record
(another replica, or this one after a restart) answers the same for the same call,
and the record is all a store needs to keep.

Timestamps run on the simulated clock: `DateCreated` is the real creation time (naive
IST), later times are that plus simulated seconds, so `Duration` always equals
`EndTime - StartTime`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Final

from app.exotel.simulator.scenarios import Plan, Scenario
from app.exotel.simulator.wire import national

EXOTEL_TIME_FORMAT: Final = "%Y-%m-%d %H:%M:%S"
PRICE_PER_STARTED_MINUTE: Final = Decimal("0.750")
DUPLICATED_CALLBACK_COPIES: Final = 3


@dataclass(frozen=True)
class LegState:
    status: str | None = None  # None: not attempted or not answered yet
    on_call_s: int = 0
    answered: bool = False

    def price(self) -> Decimal:
        return PRICE_PER_STARTED_MINUTE * math.ceil(self.on_call_s / 60)


@dataclass(frozen=True)
class Moment:
    """A call as it stands at one simulated second."""

    status: str
    updated_s: int  # simulated seconds after creation of the last change
    end_s: int | None
    caller: LegState  # leg 0, From
    callee: LegState  # leg 1, To

    @property
    def conversation_s(self) -> int:
        return self.callee.on_call_s


def moment_at(plan: Plan, elapsed_s: float) -> Moment:
    """A call is `in-progress` from its creation until its terminal status. Leg statuses
    read null until the leg is attempted and answered, then `in-progress`, then final."""
    nothing = LegState()
    if elapsed_s < plan.from_ring_s:
        return Moment("in-progress", 0, None, nothing, nothing)
    if not plan.from_answers:
        return Moment(
            "no-answer", plan.from_ring_s, plan.from_ring_s, LegState("no-answer"), nothing
        )
    reached_s = plan.from_ring_s + plan.to_ring_s
    if elapsed_s < reached_s:
        caller = LegState("in-progress", 0, answered=True)
        return Moment("in-progress", plan.from_ring_s, None, caller, nothing)
    if plan.to_outcome != "completed":
        caller = LegState("completed", plan.to_ring_s, answered=True)
        return Moment(plan.to_outcome, reached_s, reached_s, caller, LegState(plan.to_outcome))
    end_s = plan.end_s
    if elapsed_s < end_s:
        caller = LegState("in-progress", plan.to_ring_s, answered=True)
        callee = LegState("in-progress", 0, answered=True)
        return Moment("in-progress", reached_s, None, caller, callee)
    caller = LegState("completed", plan.to_ring_s + plan.talk_s, answered=True)
    callee = LegState("completed", plan.talk_s, answered=True)
    return Moment("completed", end_s, end_s, caller, callee)


@dataclass(frozen=True)
class CallbackStep:
    """One status callback a call owes, due `at_s` simulated seconds after creation."""

    name: str  # unique within the call; remembered once delivered
    at_s: int
    event_type: str | None  # None: no events subscribed, Exotel's four basic fields
    shows_s: int  # the moment of the call the payload describes
    copies: int = 1


@dataclass(frozen=True)
class SimulatedCall:
    sid: str
    account_sid: str
    from_number: str
    to_number: str
    caller_id: str
    custom_field: str | None
    record: bool
    status_callback: str | None
    callback_events: tuple[str, ...]
    callback_as_json: bool
    scenario: Scenario
    plan: Plan
    created_at: datetime  # aware, real time of the connect request
    speed: float
    # Simulated seconds already played at creation: a call that ended "at once" starts
    # at its end (the callback-before-answer scenario).
    head_start_s: int = 0
    recording_root: str | None = None  # where the simulator serving it was reached
    delivered: tuple[str, ...] = field(default=())  # names of the CallbackSteps done

    def elapsed_s(self, now: datetime) -> float:
        real_s = max((now - self.created_at).total_seconds(), 0.0)
        return self.head_start_s + real_s * self.speed

    def real_time_of(self, offset_s: float) -> datetime:
        """When (real time) the call reaches `offset_s` simulated seconds."""
        return self.created_at + timedelta(
            seconds=max(offset_s - self.head_start_s, 0) / self.speed
        )

    @property
    def ends_at(self) -> datetime:
        return self.real_time_of(self.plan.end_s)

    def moment(self, now: datetime) -> Moment:
        return moment_at(self.plan, self.elapsed_s(now))

    def time_at(self, offset_s: int | None) -> str | None:
        if offset_s is None:
            return None
        start = self.created_at.replace(microsecond=0)
        return (start + timedelta(seconds=offset_s)).strftime(EXOTEL_TIME_FORMAT)

    def recording_url(self, moment: Moment) -> str | None:
        if not (self.record and moment.callee.answered and moment.end_s is not None):
            return None
        if self.recording_root is None:
            return None
        return f"{self.recording_root}/exotelrecordings/{self.account_sid}/{self.sid}.wav"

    def has_recording(self, now: datetime) -> bool:
        return self.recording_url(self.moment(now)) is not None

    # Exotel's representations.

    def exotel_json(
        self, now: datetime, *, with_details: bool, figures_delay_s: float
    ) -> dict[str, Any]:
        """The `Call` of connect and call-details answers. Duration, Price and EndTime
        appear `figures_delay_s` simulated seconds after the end, as at Exotel."""
        return self._exotel_json_at(
            self.elapsed_s(now), with_details=with_details, figures_delay_s=figures_delay_s
        )

    def connect_answer(self) -> dict[str, Any]:
        """The connect answer: the call as it stands when the request is taken."""
        return self._exotel_json_at(0, with_details=False, figures_delay_s=math.inf)

    def _exotel_json_at(
        self, elapsed_s: float, *, with_details: bool, figures_delay_s: float
    ) -> dict[str, Any]:
        moment = moment_at(self.plan, elapsed_s)
        figures = moment.end_s is not None and elapsed_s >= moment.end_s + figures_delay_s
        price = moment.caller.price() + moment.callee.price()
        call: dict[str, Any] = {
            "Sid": self.sid,
            "ParentCallSid": None,
            "DateCreated": self.time_at(0),
            "DateUpdated": self.time_at(moment.updated_s),
            "AccountSid": self.account_sid,
            "To": national(self.to_number),
            "From": national(self.from_number),
            "PhoneNumberSid": national(self.caller_id),
            "Status": moment.status,
            "StartTime": self.time_at(0),
            "EndTime": self.time_at(moment.end_s) if figures else None,
            "Duration": str(moment.end_s) if figures else None,
            "Price": f"{price:.3f}" if figures else None,
            "Direction": "outbound-api",
            "AnsweredBy": "human" if moment.callee.answered else None,
            "ForwardedFrom": None,
            "CallerName": None,
            # Exotel's own sample answer spells the Uri this way.
            "Uri": f"/v1/Accounts/{self.account_sid}/Calls.json/{self.sid}",
            "RecordingUrl": self.recording_url(moment),
        }
        if with_details:
            call["Details"] = {
                "ConversationDuration": moment.conversation_s,
                "Leg1Status": moment.caller.status,
                "Leg2Status": moment.callee.status,
                "Legs": [
                    {"Leg": {"Id": 1, "OnCallDuration": moment.caller.on_call_s}},
                    {"Leg": {"Id": 2, "OnCallDuration": moment.callee.on_call_s}},
                ],
            }
        return call

    def callback_steps(self) -> list[CallbackStep]:
        """The callbacks this call owes: only subscribed events, as its scenario says."""
        if self.status_callback is None or self.scenario is Scenario.NO_CALLBACK:
            return []
        steps: list[CallbackStep] = []
        connected_s = self.plan.connected_s
        stale = self.scenario is Scenario.STALE_ANSWERED
        # When the connect answer is lost, so is the `answered` event: the call stays
        # unknown to Callbridge until it ends (or for good, on a long call).
        lost = self.scenario.answer_is_lost
        if connected_s is not None and "answered" in self.callback_events and not (stale or lost):
            steps.append(CallbackStep("answered", connected_s, "answered", connected_s))
        end_s = self.plan.end_s
        copies = DUPLICATED_CALLBACK_COPIES if self.scenario is Scenario.DUPLICATED_CALLBACK else 1
        terminal = "terminal" if "terminal" in self.callback_events else None
        steps.append(CallbackStep("terminal", end_s, terminal, end_s, copies))
        if stale and connected_s is not None:
            # An `answered` event that lost its way: it arrives after the terminal one.
            steps.append(CallbackStep("stale-answered", end_s, "answered", connected_s))
        return steps

    def callback_payload(self, step: CallbackStep) -> dict[str, Any]:
        """A status callback, JSON-shaped, with None for absent values."""
        moment = moment_at(self.plan, step.shows_s)
        if step.event_type is None:
            return {
                "CallSid": self.sid,
                "DateUpdated": self.time_at(moment.updated_s),
                "Status": moment.status,
                "RecordingUrl": self.recording_url(moment),
            }
        payload: dict[str, Any] = {
            "CallSid": self.sid,
            "EventType": step.event_type,
            "DateCreated": self.time_at(0),
            "DateUpdated": self.time_at(moment.updated_s),
            "Status": moment.status,
            "To": national(self.to_number),
            "From": national(self.from_number),
            "PhoneNumberSid": national(self.caller_id),
            "StartTime": self.time_at(0),
            "EndTime": self.time_at(moment.end_s),
            "Direction": "outbound-api",
            "RecordingUrl": self.recording_url(moment),
            "ConversationDuration": moment.conversation_s,
        }
        # Exotel passes CustomField back only with the terminal event.
        if step.event_type == "terminal" and self.custom_field is not None:
            payload["CustomField"] = self.custom_field
        payload["Legs"] = [
            _callback_leg(moment.caller, "NA"),
            _callback_leg(moment.callee, "HUMAN"),
        ]
        return payload

    # Storage.

    def document(self) -> dict[str, Any]:
        """The record as JSON (what a store keeps)."""
        values = asdict(self)
        values["scenario"] = self.scenario.value
        values["created_at"] = self.created_at.isoformat()
        values["callback_events"] = list(self.callback_events)
        values["delivered"] = list(self.delivered)
        return values

    @classmethod
    def from_document(cls, values: dict[str, Any]) -> SimulatedCall:
        return cls(
            **{
                **values,
                "scenario": Scenario(values["scenario"]),
                "plan": Plan(**values["plan"]),
                "created_at": datetime.fromisoformat(values["created_at"]),
                "callback_events": tuple(values["callback_events"]),
                "delivered": tuple(values["delivered"]),
            }
        )


def _callback_leg(leg: LegState, answered_by: str) -> dict[str, Any]:
    """Leg 0 (From) answers `NA`, not applicable; the To leg `HUMAN`, as Exotel documents."""
    fields: dict[str, Any] = {"OnCallDuration": leg.on_call_s, "Status": leg.status}
    if leg.answered:
        fields["AnsweredBy"] = answered_by
    return fields
