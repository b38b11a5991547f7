"""Test numbers: the last four digits of `To` choose what happens, like test card numbers.

A scenario decides two things: whether Exotel refuses the connect request (and with
which documented error), and the `Plan` of a placed call: how long each leg rings,
who answers, how long people talk. Everything else about a call follows from its plan
and the clock (see state.py).
"""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from app.exotel.limits import MAX_TIME_LIMIT_S, MAX_TIME_OUT_S

DEFAULT_RING_TIMEOUT_S: Final = 30
MAX_RING_TIMEOUT_S: Final = MAX_TIME_OUT_S

# Durations only need to look plausible; nothing here is security-sensitive.
_durations = random.Random()  # noqa: S311


class Scenario(enum.Enum):
    NORMAL = "normal"
    BUSY = "busy"
    NO_ANSWER = "no-answer"
    FAILED = "failed"
    CALLER_NO_ANSWER = "caller-no-answer"
    DND_BLOCKED = "dnd-blocked"
    RATE_LIMITED = "rate-limited"
    EXOTEL_DOWN = "exotel-down"
    SLOW_ANSWER = "slow-answer"
    LOST_ANSWER = "lost-answer"
    DUPLICATED_CALLBACK = "duplicated-callback"
    CALLBACK_BEFORE_ANSWER = "callback-before-answer"
    STALE_ANSWERED = "stale-answered"
    NO_CALLBACK = "no-callback"
    KYC_BLOCKED = "kyc-blocked"
    AUTH_FAILURE = "auth-failure"
    LOST_ANSWER_LONG_CALL = "lost-answer-long-call"

    @property
    def answer_is_lost(self) -> bool:
        return self in (Scenario.LOST_ANSWER, Scenario.LOST_ANSWER_LONG_CALL)


SCENARIO_BY_LAST_DIGITS: Final[Mapping[str, Scenario]] = {
    "9901": Scenario.BUSY,
    "9902": Scenario.NO_ANSWER,
    "9903": Scenario.FAILED,
    "9904": Scenario.CALLER_NO_ANSWER,
    "9905": Scenario.DND_BLOCKED,
    "9906": Scenario.RATE_LIMITED,
    "9907": Scenario.EXOTEL_DOWN,
    "9908": Scenario.SLOW_ANSWER,
    "9909": Scenario.LOST_ANSWER,
    "9910": Scenario.DUPLICATED_CALLBACK,
    "9911": Scenario.CALLBACK_BEFORE_ANSWER,
    "9912": Scenario.STALE_ANSWERED,
    "9913": Scenario.NO_CALLBACK,
    "9914": Scenario.KYC_BLOCKED,
    "9915": Scenario.AUTH_FAILURE,
    "9916": Scenario.LOST_ANSWER_LONG_CALL,
}


def scenario_for(to_number: str) -> Scenario:
    digits = "".join(character for character in to_number if character.isdigit())
    return SCENARIO_BY_LAST_DIGITS.get(digits[-4:], Scenario.NORMAL)


@dataclass(frozen=True)
class Refusal:
    """A documented Exotel error answer (facts file, "Error bodies")."""

    status: int
    message: str
    code: int | str | None = None
    retry_after_s: int | None = None


UNAUTHORIZED: Final = Refusal(401, "Authentication failed. Check your API key and token.")
RATE_LIMIT_EXCEEDED: Final = Refusal(
    429,
    "Rate limit exceeded. Try again in 30 seconds.",
    "RATE_LIMIT_EXCEEDED",
    retry_after_s=30,
)


def refusal_for(scenario: Scenario, national_to: str) -> Refusal | None:
    """The error of the scenarios in which Exotel refuses to place the call, else None."""
    match scenario:
        case Scenario.DND_BLOCKED:
            # Exotel's message names the number in brackets, and carries no Code.
            message = f"Call to [{national_to}] cannot be made because of TRAI NDNC regulations"
            return Refusal(403, message)
        case Scenario.KYC_BLOCKED:
            return Refusal(403, "Account is not KYC compliant", 403)
        case Scenario.RATE_LIMITED:
            return RATE_LIMIT_EXCEEDED
        case Scenario.EXOTEL_DOWN:
            return Refusal(500, "Service Unavailable; ", 35008)
        case Scenario.AUTH_FAILURE:
            return UNAUTHORIZED
        case _:
            return None


@dataclass(frozen=True)
class Plan:
    """How a call will play out, in whole simulated seconds (Exotel reports whole seconds)."""

    from_ring_s: int
    from_answers: bool
    to_ring_s: int = 0
    to_outcome: str = "completed"  # the To leg's final status; "completed" means it answered
    talk_s: int = 0

    @property
    def connected_s(self) -> int | None:
        """When To answered, if it does."""
        if not self.from_answers or self.to_outcome != "completed":
            return None
        return self.from_ring_s + self.to_ring_s

    @property
    def end_s(self) -> int:
        if not self.from_answers:
            return self.from_ring_s
        return self.from_ring_s + self.to_ring_s + self.talk_s


def ring_timeout(raw: str | None) -> int:
    """`TimeOut` bounds every ring: default 30 s, capped at Exotel's 60 s."""
    try:
        requested = int(raw) if raw else DEFAULT_RING_TIMEOUT_S
    except ValueError:
        requested = DEFAULT_RING_TIMEOUT_S
    return min(max(requested, 1), MAX_RING_TIMEOUT_S)


def time_limit(raw: str | None) -> int:
    """`TimeLimit` bounds the talk: Exotel's 4 hours when absent or unreadable."""
    try:
        requested = int(raw) if raw else MAX_TIME_LIMIT_S
    except ValueError:
        requested = MAX_TIME_LIMIT_S
    return min(max(requested, 1), MAX_TIME_LIMIT_S)


def plan_for(
    scenario: Scenario,
    *,
    ring_timeout_s: int,
    time_limit_s: int,
    lost_answer_talk_s: int,
) -> Plan:
    """The plan of a placed call; `lost_answer_talk_s` keeps a lost answer's call going
    until after the dropped connection (so Callbridge cannot learn it from a callback)."""

    def ring(low: int, high: int) -> int:
        return min(_durations.randint(low, high), ring_timeout_s)

    if scenario is Scenario.CALLER_NO_ANSWER:
        return Plan(from_ring_s=ring_timeout_s, from_answers=False)
    from_ring_s = ring(3, 6)
    match scenario:
        case Scenario.BUSY:
            return Plan(from_ring_s, from_answers=True, to_ring_s=ring(2, 4), to_outcome="busy")
        case Scenario.NO_ANSWER:
            return Plan(
                from_ring_s, from_answers=True, to_ring_s=ring_timeout_s, to_outcome="no-answer"
            )
        case Scenario.FAILED:
            return Plan(from_ring_s, from_answers=True, to_ring_s=ring(1, 2), to_outcome="failed")
        case Scenario.LOST_ANSWER_LONG_CALL:
            # People talk until the TimeLimit cuts them off: Exotel's 4 hours when unset.
            talk_s = time_limit_s
        case Scenario.LOST_ANSWER:
            talk_s = min(lost_answer_talk_s + _durations.randint(20, 60), time_limit_s)
        case _:
            talk_s = min(_durations.randint(20, 60), time_limit_s)
    return Plan(from_ring_s, from_answers=True, to_ring_s=ring(3, 8), talk_s=talk_s)


def lost_answer_talk_s(hang_s: float, speed: float) -> int:
    """Simulated seconds that outlast a lost answer's hang, played at `speed`."""
    return math.ceil(hang_s * speed)
