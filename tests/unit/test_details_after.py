"""DETAILS_AFTER_S is in Exotel's time: the simulator's compressed clock brings its
figures sooner, and Callbridge in simulator mode looks for them sooner too."""

from __future__ import annotations

from datetime import timedelta

from app.config import Settings
from app.exotel.simulator import SimulatorConfig

LIVE = {
    "exotel_account_sid": "acme",
    "exotel_api_key": "key",
    "exotel_api_token": "token",
    "callback_secret": "s3cret",
    "api_keys": "orders:abc:write",
}


def test_live_mode_first_looks_three_minutes_after_the_end_unless_told() -> None:
    assert Settings(_env_file=None, **LIVE).details_after == timedelta(seconds=180)  # type: ignore[arg-type]
    told = Settings(_env_file=None, details_after_s=300, **LIVE)  # type: ignore[arg-type]
    assert told.details_after == timedelta(seconds=300)


def test_simulator_mode_looks_on_the_simulators_clock_after_its_figures_are_in() -> None:
    simulator = SimulatorConfig()
    details_after = Settings(_env_file=None).details_after

    assert details_after == timedelta(seconds=180 / simulator.speed)
    assert details_after.total_seconds() > simulator.figures_delay_s / simulator.speed
