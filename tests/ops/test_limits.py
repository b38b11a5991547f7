"""Limits: calls per minute per API client, and the request body cap on every route."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest
import respx
from fastapi import FastAPI

from app.config import Settings
from app.main import create_app
from app.middleware import MAX_BODY_BYTES
from tests.conftest import make_settings
from tests.exotel_samples import connect_answer

PROBLEM = "application/problem+json"
VALID = {"from": "+919876543210", "to": "09123456789"}


@pytest.fixture
def settings(database_url: str) -> Settings:
    return make_settings(
        database_url,
        calls_per_minute_per_client=20,  # a burst of 2, then one every ~3 s
        api_keys=(
            "orders:orders-secret-0123456789abcdef0123456:write,"
            "billing:billing-secret-0123456789abcdef012345:write"
        ),
    )


def placing(exotel: respx.MockRouter) -> None:
    sids = iter(f"{n:032x}" for n in range(1, 100))
    exotel.post("/connect.json").mock(
        side_effect=lambda _: httpx.Response(200, json=connect_answer(next(sids)))
    )


async def test_a_client_over_its_calls_per_minute_gets_429_with_retry_after(
    app: FastAPI, exotel: respx.MockRouter
) -> None:
    placing(exotel)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://cb.test") as http:
        orders = {"Authorization": "Bearer orders-secret-0123456789abcdef0123456"}
        billing = {"Authorization": "Bearer billing-secret-0123456789abcdef012345"}
        answers = [(await http.post("/calls", json=VALID, headers=orders)) for _ in range(3)]
        other_client = await http.post("/calls", json=VALID, headers=billing)
        reads = await http.get("/calls", headers=orders)

    assert [answer.status_code for answer in answers] == [201, 201, 429]
    limited = answers[2]
    assert limited.headers["content-type"] == PROBLEM
    assert limited.json()["type"].endswith("/rate-limited")
    assert 3 <= int(limited.headers["retry-after"]) <= 4
    assert exotel.routes[0].call_count == 3
    assert other_client.status_code == 201
    assert reads.status_code == 200
    # The refused request stored nothing: two calls for orders, one for billing.
    assert sorted(call["id"] for call in reads.json()["items"]) == sorted(
        answer.json()["id"] for answer in [*answers[:2], other_client]
    )


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        ({"from": "+919876543210"}, {}),
        ({"from": "+919876543210", "to": "not a number"}, {}),
        (VALID, {"Idempotency-Key": "k" * 256}),
        (VALID, {"Content-Type": "text/plain"}),
    ],
    ids=["missing-field", "bad-number", "long-key", "not-json"],
)
async def test_a_refused_request_costs_the_client_no_place(
    app: FastAPI, exotel: respx.MockRouter, body: dict[str, str], headers: dict[str, str]
) -> None:
    placing(exotel)
    transport = httpx.ASGITransport(app=app)
    orders = {"Authorization": "Bearer orders-secret-0123456789abcdef0123456"}
    async with httpx.AsyncClient(transport=transport, base_url="http://cb.test") as http:
        refused = [
            await http.post(
                "/calls",
                content=json.dumps(body),
                headers={"Content-Type": "application/json", **orders, **headers},
            )
            for _ in range(3)
        ]
        placed = [(await http.post("/calls", json=VALID, headers=orders)) for _ in range(2)]

    assert {answer.status_code for answer in refused} <= {415, 422}
    # The burst of 2 is still whole.
    assert [answer.status_code for answer in placed] == [201, 201]


async def test_replicas_share_each_clients_limit(
    settings: Settings, exotel: respx.MockRouter
) -> None:
    placing(exotel)
    orders = {"Authorization": "Bearer orders-secret-0123456789abcdef0123456"}
    replicas = [create_app(settings), create_app(settings)]
    async with (
        replicas[0].router.lifespan_context(replicas[0]),
        replicas[1].router.lifespan_context(replicas[1]),
    ):
        answers = []
        for replica in [*replicas, *replicas]:
            transport = httpx.ASGITransport(app=replica)
            async with httpx.AsyncClient(transport=transport, base_url="http://cb.test") as http:
                answers.append((await http.post("/calls", json=VALID, headers=orders)).status_code)

    # One bucket for the fleet: a burst of 2 in all, not 2 on each replica.
    assert answers == [201, 201, 429, 429]


@pytest.fixture
async def http(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://cb.test",
        headers={"Authorization": "Bearer orders-secret-0123456789abcdef0123456"},
    ) as client:
        yield client


@pytest.mark.parametrize("path", ["/calls", "/callbacks/exotel?token=x", "/healthz"])
async def test_a_declared_oversized_body_is_refused_before_the_app_runs(
    http: httpx.AsyncClient, exotel: respx.MockRouter, path: str
) -> None:
    response = await http.post(path, content=b"{" + b" " * MAX_BODY_BYTES + b"}")

    assert response.status_code == 413
    assert response.headers["content-type"] == PROBLEM
    assert response.json()["type"].endswith("/body-too-large")
    assert response.headers["x-request-id"]


async def test_a_streamed_body_is_cut_off_at_the_limit(
    http: httpx.AsyncClient, exotel: respx.MockRouter
) -> None:
    sent_chunks = 0

    async def endless_json() -> AsyncIterator[bytes]:
        nonlocal sent_chunks
        yield b'{"from": "+919876543210", "to": "09123456789", "custom_field": "'
        for _ in range(1000):
            sent_chunks += 1
            yield b"x" * 4096

    response = await http.post(
        "/calls", content=endless_json(), headers={"content-type": "application/json"}
    )

    assert response.status_code == 413
    assert response.headers["content-type"] == PROBLEM
    assert sent_chunks <= MAX_BODY_BYTES // 4096 + 1
    assert not exotel.calls


async def test_bodies_under_the_limit_pass(
    http: httpx.AsyncClient, exotel: respx.MockRouter
) -> None:
    placing(exotel)
    padded = b'{"from": "+919876543210", "to": "09123456789"' + b" " * 60_000 + b"}"

    response = await http.post(
        "/calls", content=padded, headers={"content-type": "application/json"}
    )

    assert response.status_code == 201


@pytest.mark.parametrize("limit", ["0", "201", "100000"])
async def test_list_pages_are_bounded(http: httpx.AsyncClient, limit: str) -> None:
    response = await http.get("/calls", params={"limit": limit})

    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "limit"


@pytest.mark.parametrize(
    ("method", "path", "params", "body", "field"),
    [
        ("GET", "/calls/a%00b", {}, None, "ref"),
        ("GET", "/calls/a%00b/events", {}, None, "ref"),
        ("GET", "/calls", {"status": "a\x00"}, None, "status"),
        ("GET", "/calls", {"custom_field": "a\x00"}, None, "custom_field"),
        ("POST", "/calls", {}, {**VALID, "custom_field": "a\x00"}, "custom_field"),
    ],
)
async def test_text_postgres_cannot_store_is_refused_not_a_server_error(
    http: httpx.AsyncClient,
    exotel: respx.MockRouter,
    method: str,
    path: str,
    params: dict[str, str],
    body: dict[str, str] | None,
    field: str,
) -> None:
    response = await http.request(method, path, params=params, json=body)

    assert response.status_code == 422
    assert [error["field"] for error in response.json()["errors"]] == [field]
    assert not exotel.calls
