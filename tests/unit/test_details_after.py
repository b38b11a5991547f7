"""Simulator mode looks for a call's figures after its simulator has filled them in,
on a clock that runs faster than Exotel's (issue 10, item 1)."""

from __future__ import annotations

from app.config import Settings
from app.exotel.simulator import SimulatorConfig


def test_simulator_mode_first_looks_once_the_simulators_figures_are_in() -> None:
    simulator = SimulatorConfig()  # as simulator mode builds it
    figures_in_s = simulator.figures_delay_s / simulator.speed

    first_look_s = Settings(_env_file=None, callbridge_simulator=True).details_after

    assert figures_in_s < first_look_s.total_seconds() < 2 * figures_in_s
