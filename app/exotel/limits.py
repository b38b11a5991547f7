"""Exotel's limits on one call's length, and how long a call may therefore still run.

A call whose connect answer was lost may be talking right now, and bulk call details
do not list ongoing calls: "not found" means "not placed" only once the call could no
longer be running.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Final

MAX_TIME_LIMIT_S: Final = 14400  # TimeLimit: 4 hours, also a call's length when unset
MAX_TIME_OUT_S: Final = 60  # TimeOut: each leg's ring time (TRAI), at most a minute


def longest_call(time_out_s: int | None, time_limit_s: int | None) -> timedelta:
    """The longest a call asked with these options can last, from the connect request
    to its end: both legs ring at most `time_out_s` (Exotel's cap when unset), then
    people talk at most `time_limit_s` (Exotel's 4 hours when unset)."""
    ring_s = min(time_out_s or MAX_TIME_OUT_S, MAX_TIME_OUT_S)
    talk_s = min(time_limit_s or MAX_TIME_LIMIT_S, MAX_TIME_LIMIT_S)
    return timedelta(seconds=2 * ring_s + talk_s)
