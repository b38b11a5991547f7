"""Figures Exotel fills in minutes after a call ends: Price, Duration, sometimes EndTime.

Callbacks carry neither Price nor Duration; only call details do, about 2 to 5 minutes
after the end. So every finished call with a Sid is looked up DETAILS_AFTER_S after
its end, with bulk call details, up to 100 Sids a request: at Exotel's full 200 calls
a minute that is about two requests a minute of the shared budget. A call whose
figures are not there yet is looked at again later, each wait twice the last (at most
an hour), until GIVE_UP_AFTER past its end; then it is left without them, and says so.

This module holds the Exotel side (what to ask, what the answer means, when to look
again); claiming due calls and writing what arrived is the database's side.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from app.exotel.client import MAX_SIDS_PER_REQUEST, ExotelClient
from app.exotel.schemas import ExotelCall

EVENT_TYPE: Final = "call.updated"  # the notification sent when the figures arrive
BATCH: Final = MAX_SIDS_PER_REQUEST  # Sids per look: one bulk request
MAX_INTERVAL: Final = timedelta(hours=1)
GIVE_UP_AFTER: Final = timedelta(hours=24)  # past the end; Exotel fills them within minutes
GAVE_UP: Final = (
    "Exotel had not filled in the price and duration of this call "
    f"{int(GIVE_UP_AFTER.total_seconds() // 3600)} hours after it ended; Callbridge stopped asking"
)


@dataclass(frozen=True)
class FiguresSchedule:
    """When to look for a finished call's figures."""

    first_after: timedelta  # DETAILS_AFTER_S
    give_up_after: timedelta = GIVE_UP_AFTER

    def first_look(self, ended_at: datetime) -> datetime:
        return ended_at + self.first_after

    def next_look(self, ended_at: datetime, looks: int, now: datetime) -> datetime | None:
        """After `looks` looks without the figures: when to look again, or None to give up."""
        if now >= ended_at + self.give_up_after:
            return None
        wait = min(self.first_after * (1 << min(looks - 1, 32)), MAX_INTERVAL)
        return min(now + wait, ended_at + self.give_up_after)


@dataclass(frozen=True)
class Figures:
    """What one look found: the calls whose figures are in, and the Sids still waiting
    (not listed, as an ongoing or unknown call is not, or listed without a Price)."""

    arrived: dict[str, ExotelCall]
    waiting: list[str]


async def look_for_figures(exotel: ExotelClient, sids: Sequence[str]) -> Figures:
    """One look for up to BATCH calls' figures: one bulk call-details request."""
    if len(sids) > BATCH:
        raise ValueError(f"at most {BATCH} Sids a look")
    listed = {call.sid: call for call in await exotel.bulk_details_by_sids(sids)}
    arrived = {sid: call for sid, call in listed.items() if call.has_figures and sid in sids}
    return Figures(arrived, [sid for sid in dict.fromkeys(sids) if sid not in arrived])
