"""How a simulator is set up: its account, its speed, and the Exotel behaviours to mimic."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# The three bulk-paging shapes Exotel documents (see ExotelCallList in app/exotel/schemas.py).
Paging = Literal["metadata", "top-level", "after-sid"]


@dataclass(frozen=True)
class SimulatorConfig:
    account_sid: str = "callbridge-sim"
    api_key: str = "sim-key"
    api_token: str = "sim-token"  # noqa: S105 - the simulator's well-known dev credential
    speed: float = 10.0  # simulated seconds per real second: a 30 s call takes 3 s
    # Real seconds a "lost answer" connect hangs before dropping: longer than Callbridge's
    # default EXOTEL_TIMEOUT_S (10 s), so that its 504 is what a user sees.
    lost_answer_hang_s: float = 30.0
    slow_answer_s: float = 2.0  # real seconds the "slow answer" scenario waits before answering
    # Simulated seconds after a call's end before call details show Duration, Price and
    # EndTime (Exotel: about 2 to 5 minutes).
    figures_delay_s: float = 150.0
    # Exotel's limit per account over any 60 s (sliding) window, answered with 429;
    # None switches the limit off (benchmarks that measure Callbridge alone).
    requests_per_minute: int | None = 200
    paging: Paging = "metadata"
    # With a database: real seconds after a call's end past which a simulator that finds
    # its callbacks still owed (the process that played it died) delivers them itself.
    resume_after_s: float = 120.0

    def __post_init__(self) -> None:
        if self.speed <= 0:
            raise ValueError("speed must be positive")
        if self.requests_per_minute is not None and self.requests_per_minute < 1:
            raise ValueError("requests_per_minute must be positive (or None for no limit)")
