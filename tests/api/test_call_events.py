"""GET /calls/{ref}/events: what Exotel said about a call, oldest first, as received."""

from __future__ import annotations

import json
from datetime import datetime

import httpx
import respx

from tests.conftest import READER_KEY
from tests.exotel_callbacks import (
    JSON_SAMPLE,
    SAMPLE_SID,
    as_multipart,
    as_urlencoded,
    callback,
    form_sample,
    place_calls,
)

SID = SAMPLE_SID
OTHER_SID = "c5797dcbaaeed7678c4062a4a3ed2f8a"


async def test_events_are_listed_oldest_first_with_their_raw_payloads(
    client: httpx.AsyncClient, exotel: respx.MockRouter, exotel_side: httpx.AsyncClient
) -> None:
    [(call, url), (_, other_url)] = await place_calls(client, exotel, SID, OTHER_SID)
    answered = [
        ("CallSid", SID),
        ("EventType", "answered"),
        ("Status", "in-progress"),
        ("DateUpdated", "2019-04-08 03:18:05"),
    ]
    sent = [
        exotel_side.build_request("POST", url, **as_multipart(answered)),
        exotel_side.build_request(
            "POST", url, content=JSON_SAMPLE, headers={"content-type": "application/json"}
        ),
        exotel_side.build_request("POST", url, **as_urlencoded(form_sample())),
    ]
    for request in sent:
        await request.aread()
        assert (await exotel_side.send(request)).status_code == 200
    await exotel_side.post(other_url, json=callback(CallSid=OTHER_SID))

    response = await client.get(
        f"/calls/{SID}/events", headers={"Authorization": f"Bearer {READER_KEY}"}
    )

    assert response.status_code == 200
    items = response.json()["items"]
    # A JSON body reads as its document; forms as the text received.
    assert [item["payload"] for item in items] == [
        sent[0].content.decode(),
        json.loads(JSON_SAMPLE),
        sent[2].content.decode(),
    ]
    assert [item["content_type"] for item in items] == [
        request.headers["content-type"] for request in sent
    ]
    assert [(i["source"], i["event_type"], i["status"], i["applied"]) for i in items] == [
        ("callback", "answered", "in-progress", True),
        ("callback", "terminal", "no-answer", True),
        ("callback", "terminal", "no-answer", False),
    ]
    ids = [item["id"] for item in items]
    received = [datetime.fromisoformat(item["received_at"]) for item in items]
    assert ids == sorted(ids)
    assert received == sorted(received)
    assert all(moment.tzinfo is not None for moment in received)
    by_id = await client.get(f"/calls/{call['id']}/events")
    assert by_id.json() == response.json()


async def test_a_call_without_callbacks_has_no_events(
    client: httpx.AsyncClient, exotel: respx.MockRouter
) -> None:
    [(call, _)] = await place_calls(client, exotel, SID)
    response = await client.get(f"/calls/{call['id']}/events")
    assert response.status_code == 200
    assert response.json() == {"items": []}


async def test_an_unknown_call_is_404(client: httpx.AsyncClient) -> None:
    for ref in ("no-such-sid", "8f0c1a9e-8f7e-4d7e-9a55-2f4f6a0c7b11"):
        response = await client.get(f"/calls/{ref}/events")
        assert response.status_code == 404
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["status"] == 404


async def test_events_need_an_api_key(client: httpx.AsyncClient) -> None:
    client.headers.pop("Authorization")
    response = await client.get(f"/calls/{SID}/events")
    assert response.status_code == 401


async def test_the_events_route_is_documented(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()
    operation = schema["paths"]["/calls/{ref}/events"]["get"]
    assert operation["summary"]
    assert {"200", "401", "404"} <= set(operation["responses"])
    ok = operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": "#/components/schemas/CallEventList"}
    event = schema["components"]["schemas"]["CallEventOut"]
    assert set(event["required"]) >= {
        "id",
        "source",
        "received_at",
        "content_type",
        "event_type",
        "status",
        "applied",
        "payload",
    }
