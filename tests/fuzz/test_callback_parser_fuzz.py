"""The callback parser, fuzzed with Exotel-shaped payloads: total, fast, and clean output.

Whatever arrives, `parse_callback` either returns a callback whose every value the
database and the JSON layer can take and that a real call could have, or raises one of
its documented CallbackErrors; and it does so in bounded time (issue 11, items 2, 7, 21).
"""

from __future__ import annotations

import asyncio
import gc
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings

from app.exotel.callbacks import CallbackError, parse_callback
from app.exotel.schemas import (
    CALL_STATUSES,
    EARLIEST_TIME,
    MAX_DURATION_S,
    MAX_PRICE,
    CallUpdate,
    ExotelCallback,
)
from tests.fuzz.exotel_strategies import callback_bodies

# CPU time, so that other work on a shared machine does not count; the frozen loop this
# guards against took 30 s.
SLOWEST_PARSE_S = 0.5


def storable(value: Any) -> bool:
    """Text Postgres takes: no NUL, valid UTF-8 (no lone surrogates)."""
    if not isinstance(value, str):
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\x00" not in value


def assert_clean(callback: ExotelCallback, update: CallUpdate) -> None:
    latest = datetime.now(UTC) + timedelta(days=1, minutes=1)
    for value in callback.model_dump().values():
        assert storable(value)
    for moment in (update.date_created, update.date_updated, update.start_time, update.end_time):
        assert moment is None or (moment.tzinfo is not None and EARLIEST_TIME <= moment <= latest)
    for seconds in (update.duration, update.conversation_duration):
        assert seconds is None or 0 <= seconds <= MAX_DURATION_S
    assert update.price is None or 0 <= update.price <= MAX_PRICE
    assert update.status is None or update.status in CALL_STATUSES
    assert [leg.leg for leg in update.legs] == sorted({leg.leg for leg in update.legs})
    for leg in update.legs:
        assert leg.leg in (0, 1)
        assert leg.status is None or leg.status in CALL_STATUSES
        assert leg.on_call_duration is None or 0 <= leg.on_call_duration <= MAX_DURATION_S
        assert storable(leg.answered_by)
    assert 1 <= len(callback.call_sid) <= 64


@given(callback_bodies())
@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
def test_the_parser_is_total_fast_and_its_output_clean(body_and_type: tuple[bytes, str]) -> None:
    body, content_type = body_and_type
    # The parser's own cost: a full collection of the test process's heap is not its.
    gc.disable()
    started = time.process_time()
    try:
        callback = asyncio.run(parse_callback(body, content_type))
    except CallbackError:
        return
    finally:
        spent = time.process_time() - started
        gc.enable()
        assert spent < SLOWEST_PARSE_S
    assert_clean(callback, callback.to_update())
