"""Fixtures of the fault suite: a private embedded Postgres, and each run's report."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from app.db import PROJECT_ROOT
from tests.faults.harness import LOGS, PrivatePostgres, Report


@pytest.fixture(scope="session")
def private_postgres() -> Iterator[PrivatePostgres]:
    """An embedded Postgres of the fault suite's own, whatever TEST_DATABASE_URL says:
    the tests restart it."""
    LOGS.mkdir(parents=True, exist_ok=True)
    server = PrivatePostgres(PROJECT_ROOT / ".callbridge" / "faults")
    yield server
    server.stop()


@pytest.fixture
def report(request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]) -> Iterator[Report]:
    """Printed at the end of the test, passed or failed, even when output is captured."""
    found = Report(
        f"{request.node.name} ({'full' if os.environ.get('FAULTS_FULL') == '1' else 'quick'})"
    )
    yield found
    with capsys.disabled():
        print("\n" + found.text())
