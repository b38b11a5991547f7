"""Looking for the figures Exotel fills in after a call ends, against the simulator
(app/jobs/details.py, its Exotel side), and when to look again."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from app.exotel.client import ExotelClient
from app.exotel.limits import longest_call
from app.exotel.simulator import Simulator, SimulatorConfig
from app.jobs.details import FiguresSchedule, look_for_figures
from tests.limiters import Unlimited
from tests.simulator.conftest import CREDENTIALS, CallbackReceiver, connect

# Figures 300 simulated seconds (0.3 s) after the end.
LATE_FIGURES = SimulatorConfig(speed=1000.0, figures_delay_s=300)


@pytest.fixture
async def simulated() -> AsyncIterator[tuple[ExotelClient, httpx.AsyncClient, CallbackReceiver]]:
    receiver = CallbackReceiver()
    simulator = Simulator(LATE_FIGURES, callback_transport=httpx.MockTransport(receiver.handle))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=simulator.app), base_url="http://sim", auth=CREDENTIALS
    ) as http:
        client = ExotelClient(http, account_sid=LATE_FIGURES.account_sid, limiter=Unlimited())
        yield client, http, receiver
    await simulator.aclose()


async def test_figures_arrive_some_time_after_the_end_with_every_leg(
    simulated: tuple[ExotelClient, httpx.AsyncClient, CallbackReceiver],
) -> None:
    exotel, http, receiver = simulated
    sid = await connect(http)
    await receiver.wait_for(1)  # ended

    too_early = await look_for_figures(exotel, [sid])
    for _ in range(100):
        later = await look_for_figures(exotel, [sid])
        if later.arrived:
            break
        await asyncio.sleep(0.02)

    assert (too_early.arrived, too_early.waiting) == ({}, [sid])
    call = later.arrived[sid].call
    assert json.loads(later.arrived[sid].raw)["Sid"] == sid
    assert call.price is not None
    assert call.duration is not None
    update = call.to_update()
    assert update.answered_by == "human"
    assert [leg.leg for leg in update.legs] == [0, 1]
    assert all(leg.on_call_duration for leg in update.legs)


async def test_an_ongoing_call_is_waiting() -> None:
    real_time = SimulatorConfig(speed=1.0)  # a call lasts half a minute at least
    simulator = Simulator(
        real_time, callback_transport=httpx.MockTransport(lambda _: httpx.Response(200))
    )
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=simulator.app), base_url="http://sim", auth=CREDENTIALS
    ) as http:
        exotel = ExotelClient(http, account_sid=real_time.account_sid, limiter=Unlimited())
        sid = await connect(http)

        figures = await look_for_figures(exotel, [sid, "unknown-sid"])
    await simulator.aclose()

    assert (figures.arrived, figures.waiting) == ({}, [sid, "unknown-sid"])


def test_looks_back_off_to_an_hour_and_give_up_a_day_after_the_end() -> None:
    schedule = FiguresSchedule(first_after=timedelta(seconds=180))
    ended = datetime(2026, 11, 27, 10, tzinfo=UTC)
    now = ended + timedelta(minutes=3)

    assert schedule.next_look(ended, 1, now) == now + timedelta(minutes=3)
    assert schedule.next_look(ended, 2, now) == now + timedelta(minutes=6)
    assert schedule.next_look(ended, 10, now) == now + timedelta(hours=1)
    last = ended + timedelta(hours=23, minutes=30)
    assert schedule.next_look(ended, 20, last) == ended + timedelta(hours=24)
    assert schedule.next_look(ended, 21, ended + timedelta(hours=24)) is None


@pytest.mark.parametrize(
    ("time_out", "time_limit", "longest"),
    [(None, None, 2 * 60 + 14400), (30, 600, 2 * 30 + 600), (90, 99999, 2 * 60 + 14400)],
)
def test_a_call_may_run_two_rings_and_its_time_limit(
    time_out: int | None, time_limit: int | None, longest: int
) -> None:
    assert longest_call(time_out, time_limit) == timedelta(seconds=longest)
