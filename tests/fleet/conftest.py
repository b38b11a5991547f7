"""The fleet test's report, printed whether it passes or not."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.faults.harness import Report


@pytest.fixture
def report(request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]) -> Iterator[Report]:
    found = Report(
        f"{request.node.name} ({'full' if os.environ.get('FLEET_FULL') == '1' else 'quick'})"
    )
    yield found
    with capsys.disabled():
        print("\n" + found.text())
