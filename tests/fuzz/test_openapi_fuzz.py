"""Schemathesis against the OpenAPI document, in-process, with Exotel mocked at HTTP.

Every operation gets generated requests, valid and invalid; no answer may be a server
error and every answer must be one the document describes (status, content type,
headers, body schema). Bounded by `max_examples` to stay well under a minute.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import respx
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.python.asgi import shutdown_lifespans
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.main import create_app
from tests.conftest import EXOTEL_CALLS, WRITER_KEY, make_settings
from tests.exotel_samples import connect_answer
from tests.exotel_wire import EXOTEL_WIRE

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


def _exotel_places_the_call(_: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json=connect_answer(uuid.uuid4().hex))


@pytest.fixture(scope="module")
def fuzzed_app(database_url: str) -> Iterator[FastAPI]:
    settings = make_settings(database_url, calls_per_minute_per_client=1_000_000)
    with respx.mock(using=EXOTEL_WIRE, base_url=EXOTEL_CALLS, assert_all_called=False) as exotel:
        exotel.post("/connect.json").mock(side_effect=_exotel_places_the_call)
        # Schemathesis starts the app's lifespan in its own event loop, on first use.
        yield create_app(settings)
        shutdown_lifespans()


# The document does not depend on settings, so it can be read before any fixture runs.
schema = schemathesis.openapi.from_dict(create_app().openapi())


@schema.parametrize()
@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_no_server_errors_and_every_answer_is_documented(case: Any, fuzzed_app: FastAPI) -> None:
    case.call_and_validate(
        app=fuzzed_app, headers={"Authorization": f"Bearer {WRITER_KEY}"}, checks=CHECKS
    )
