"""GET /metrics: Prometheus text, counting requests, Exotel, status changes and the queues."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import psycopg
import pytest
import respx
from fastapi import FastAPI
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from app.jobs.worker import probe_app
from app.ops.service import OpsService
from tests.conftest import READER_KEY
from tests.exotel_samples import connect_answer

SID = "6a1d0c3c0e1b4a0f9b9e2f1d3c4b5a69"


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def scrape(text: str) -> dict[str, float]:
    """Unlabelled samples of a scrape, by name."""
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.labels
    }


async def test_served_without_a_key_in_the_text_format(app: FastAPI) -> None:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://callbridge.test"
    ) as anonymous:
        response = await anonymous.get("/metrics")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    names = {family.name for family in text_string_to_metric_families(response.text)}
    assert {
        "callbridge_http_requests",
        "callbridge_http_request_duration_seconds",
        "callbridge_exotel_requests",
        "callbridge_exotel_request_duration_seconds",
        "callbridge_callbacks",
        "callbridge_call_status_transitions",
        "callbridge_relay_failures",
        "callbridge_rate_limited",
    } <= names
    # Counted from the database, the same on every replica: left to the job runners.
    assert not names & {"callbridge_relay_queue_depth", "callbridge_reconcile_backlog"}


async def test_a_placed_call_counts_its_request_exotel_and_status_change(
    client: httpx.AsyncClient, exotel: respx.MockRouter
) -> None:
    exotel.post("/connect.json").respond(200, json=connect_answer(SID))
    http = {"method": "POST", "route": "/calls", "status": "201"}
    exotel_ok = {"operation": "connect", "outcome": "ok"}
    transition = {"from_status": "pending", "to_status": "in-progress"}
    before = (
        sample("callbridge_http_requests_total", **http),
        sample("callbridge_http_request_duration_seconds_count", method="POST", route="/calls"),
        sample("callbridge_exotel_requests_total", **exotel_ok),
        sample("callbridge_exotel_request_duration_seconds_count", **exotel_ok),
        sample("callbridge_call_status_transitions_total", **transition),
    )

    response = await client.post("/calls", json={"from": "+919876543210", "to": "09123456789"})

    assert response.status_code == 201
    after = (
        sample("callbridge_http_requests_total", **http),
        sample("callbridge_http_request_duration_seconds_count", method="POST", route="/calls"),
        sample("callbridge_exotel_requests_total", **exotel_ok),
        sample("callbridge_exotel_request_duration_seconds_count", **exotel_ok),
        sample("callbridge_call_status_transitions_total", **transition),
    )
    assert [b - a for a, b in zip(before, after, strict=True)] == [1, 1, 1, 1, 1]


async def test_routes_are_labelled_by_template_never_by_raw_path(
    client: httpx.AsyncClient,
) -> None:
    client.headers["Authorization"] = f"Bearer {READER_KEY}"
    found = {"method": "GET", "route": "/calls/{ref}", "status": "404"}
    unmatched = {"method": "GET", "route": "unmatched", "status": "404"}
    before = sample("callbridge_http_requests_total", **found)
    before_unmatched = sample("callbridge_http_requests_total", **unmatched)

    docs = {"method": "GET", "route": "/openapi.json", "status": "200"}
    before_docs = sample("callbridge_http_requests_total", **docs)

    await client.get("/calls/some-sid")
    await client.get("/no/such/path/+919876543210")
    await client.get("/openapi.json")

    assert sample("callbridge_http_requests_total", **found) == before + 1
    assert sample("callbridge_http_requests_total", **docs) == before_docs + 1
    assert sample("callbridge_http_requests_total", **unmatched) == before_unmatched + 1
    scraped = (await client.get("/metrics")).text
    assert "some-sid" not in scraped
    assert "919876543210" not in scraped


@pytest.fixture
async def job_runner(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """The operations routes as a process running the jobs serves them (the worker's
    probe server), without jobs that would change what the gauges count."""
    probes = probe_app(OpsService(app.state.sessions, exports_fleet_gauges=True))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=probes), base_url="http://worker.test"
    ) as http:
        yield http


async def test_the_job_runners_gauges_count_the_relay_queue_and_the_due_reconciliations(
    job_runner: httpx.AsyncClient, database_url: str
) -> None:
    now = datetime.now(UTC)
    reconcile_at = [now - timedelta(minutes=5), now - timedelta(seconds=1), now + timedelta(1)]
    notifications = ["pending", "pending", "delivered"]
    with psycopg.connect(database_url.replace("postgresql+psycopg://", "postgresql://")) as conn:
        for when, status in zip(reconcile_at, notifications, strict=True):
            call_id = uuid.uuid4()
            conn.execute(
                "INSERT INTO calls (id, status, from_number, to_number, caller_id, api_client,"
                " next_reconcile_at) VALUES (%s, 'in-progress', '+919876543210',"
                " '+919123456789', '+918047112233', 'orders', %s)",
                (call_id, when),
            )
            conn.execute(
                "INSERT INTO notifications (id, call_id, url, status) VALUES (%s, %s, %s, %s)",
                (f"msg_{call_id.hex}", call_id, "https://orders.test/hook", status),
            )

    scraped = scrape((await job_runner.get("/metrics")).text)

    assert scraped["callbridge_relay_queue_depth"] == 2
    assert scraped["callbridge_reconcile_backlog"] == 2
