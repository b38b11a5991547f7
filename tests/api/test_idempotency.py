"""Idempotency-Key on POST /calls: a logical request places at most one call."""

from __future__ import annotations

import asyncio

import httpx
import respx

from tests.conftest import READER_KEY
from tests.exotel_samples import connect_answer, rest_exception

SID = "c5797dcbaaeed7678c4062a4a3ed2f8a"
BODY = {"from": "+919876543210", "to": "+919123456789", "custom_field": "order-7"}


async def test_same_key_and_body_replays_the_first_answer(
    client: httpx.AsyncClient, exotel: respx.MockRouter
) -> None:
    route = exotel.post("/connect.json").respond(200, json=connect_answer(SID))
    headers = {"Idempotency-Key": "order-7-attempt"}

    first = await client.post("/calls", json=BODY, headers=headers)
    second = await client.post("/calls", json=BODY, headers=headers)

    assert first.status_code == second.status_code == 201
    assert second.json() == first.json()
    assert second.headers["location"] == first.headers["location"]
    assert second.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert route.call_count == 1


async def test_same_number_in_another_form_is_the_same_body(
    client: httpx.AsyncClient, exotel: respx.MockRouter
) -> None:
    route = exotel.post("/connect.json").respond(200, json=connect_answer(SID))
    headers = {"Idempotency-Key": "k"}
    await client.post("/calls", json=BODY, headers=headers)
    replay = await client.post("/calls", json={**BODY, "to": "09123456789"}, headers=headers)
    assert replay.status_code == 201
    assert route.call_count == 1


async def test_same_key_with_another_body_is_422(
    client: httpx.AsyncClient, exotel: respx.MockRouter
) -> None:
    route = exotel.post("/connect.json").respond(200, json=connect_answer(SID))
    headers = {"Idempotency-Key": "order-7-attempt"}
    await client.post("/calls", json=BODY, headers=headers)

    other = await client.post("/calls", json={**BODY, "custom_field": "order-8"}, headers=headers)

    assert other.status_code == 422
    assert other.headers["content-type"] == "application/problem+json"
    assert other.json()["type"].endswith("idempotency-key-reused")
    assert route.call_count == 1


async def test_keys_are_scoped_per_api_client(database_url: str, exotel: respx.MockRouter) -> None:
    from fastapi import FastAPI

    from app.main import create_app
    from tests.conftest import make_settings

    sids = iter(["a" * 32, "b" * 32])
    route = exotel.post("/connect.json").mock(
        side_effect=lambda request: httpx.Response(200, json=connect_answer(next(sids)))
    )
    settings = make_settings(
        database_url,
        api_keys="orders:orders-secret-0123456789abcdef0123456:write,billing:billing-secret-0123456789abcdef012345:write",
    )
    app: FastAPI = create_app(settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://callbridge.test"
        ) as http,
    ):
        headers = {"Idempotency-Key": "shared-key"}
        orders = await http.post(
            "/calls",
            json=BODY,
            headers={**headers, "Authorization": "Bearer orders-secret-0123456789abcdef0123456"},
        )
        billing = await http.post(
            "/calls",
            json=BODY,
            headers={**headers, "Authorization": "Bearer billing-secret-0123456789abcdef012345"},
        )
    assert orders.status_code == billing.status_code == 201
    assert orders.json()["sid"] != billing.json()["sid"]
    assert route.call_count == 2


async def test_ten_concurrent_requests_with_one_key_make_one_exotel_request(
    client: httpx.AsyncClient, exotel: respx.MockRouter
) -> None:
    async def slow_exotel(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.2)
        return httpx.Response(200, json=connect_answer(SID))

    route = exotel.post("/connect.json").mock(side_effect=slow_exotel)
    headers = {"Idempotency-Key": "burst"}

    responses = await asyncio.gather(
        *(client.post("/calls", json=BODY, headers=headers) for _ in range(10))
    )

    assert route.call_count == 1
    statuses = sorted(response.status_code for response in responses)
    assert statuses.count(201) >= 1
    assert set(statuses) <= {201, 409}
    for response in responses:
        if response.status_code == 409:
            assert response.headers["content-type"] == "application/problem+json"
            assert response.headers["retry-after"] == "1"
    listed = await client.get("/calls")
    assert len(listed.json()["items"]) == 1
    # Once the first finished, a retry replays it.
    replay = await client.post("/calls", json=BODY, headers=headers)
    assert replay.status_code == 201
    assert replay.headers["idempotent-replayed"] == "true"


async def test_a_refusal_is_replayed_not_retried(
    client: httpx.AsyncClient, exotel: respx.MockRouter
) -> None:
    message = "Call to [09123456789] cannot be made because of TRAI NDNC regulations"
    route = exotel.post("/connect.json").respond(403, json=rest_exception(403, message))
    headers = {"Idempotency-Key": "dnd"}

    first = await client.post("/calls", json=BODY, headers=headers)
    second = await client.post("/calls", json=BODY, headers=headers)

    assert first.status_code == second.status_code == 422
    assert second.json() == first.json()
    assert second.headers["idempotent-replayed"] == "true"
    assert route.call_count == 1


async def test_a_transient_failure_releases_the_key_for_a_retry(
    client: httpx.AsyncClient, exotel: respx.MockRouter
) -> None:
    route = exotel.post("/connect.json")
    route.side_effect = [
        httpx.Response(429, json=rest_exception(429, "Too many"), headers={"Retry-After": "5"}),
        httpx.Response(200, json=connect_answer(SID)),
    ]
    headers = {"Idempotency-Key": "busy-exotel"}

    first = await client.post("/calls", json=BODY, headers=headers)
    second = await client.post("/calls", json=BODY, headers=headers)

    assert (first.status_code, second.status_code) == (503, 201)
    assert "idempotent-replayed" not in second.headers
    assert route.call_count == 2
    statuses = sorted(item["status"] for item in (await client.get("/calls")).json()["items"])
    assert statuses == ["failed", "in-progress"]


async def test_a_lost_answer_keeps_the_key_and_never_calls_exotel_again(
    client: httpx.AsyncClient, exotel: respx.MockRouter
) -> None:
    route = exotel.post("/connect.json").mock(side_effect=httpx.ReadTimeout("no answer"))
    headers = {"Idempotency-Key": "lost"}

    first = await client.post("/calls", json=BODY, headers=headers)
    second = await client.post("/calls", json=BODY, headers=headers)

    assert first.status_code == second.status_code == 504
    assert second.json()["id"] == first.json()["id"]
    assert route.call_count == 1


async def test_idempotency_key_length_is_checked(client: httpx.AsyncClient) -> None:
    response = await client.post("/calls", json=BODY, headers={"Idempotency-Key": "k" * 256})
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "Idempotency-Key"


async def test_reader_key_cannot_use_idempotency_to_place(
    client: httpx.AsyncClient, exotel: respx.MockRouter
) -> None:
    route = exotel.post("/connect.json").respond(200, json=connect_answer(SID))
    response = await client.post(
        "/calls",
        json=BODY,
        headers={"Idempotency-Key": "k", "Authorization": f"Bearer {READER_KEY}"},
    )
    assert response.status_code == 403
    assert route.call_count == 0
