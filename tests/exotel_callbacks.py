"""Exotel's sample status callbacks (fixture files) and how Exotel sends them, for tests."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs, urlencode

import httpx
import respx

from tests.conftest import FIXTURES
from tests.exotel_samples import connect_answer

SAMPLE_SID = "492205107c5fb48f4ac25d1f77759339"
JSON_SAMPLE = (FIXTURES / "exotel_callback_terminal.json").read_bytes()
Fields = list[tuple[str, str]]


def form_sample() -> Fields:
    """Exotel's form sample, printed as `Name: value` lines, as (name, value) pairs."""
    fields = []
    for line in (FIXTURES / "exotel_callback_terminal_form.txt").read_text().splitlines():
        name, _, value = line.partition(":")
        fields.append((name.strip(), value.strip()))
    return fields


def callback(**changes: Any) -> dict[str, Any]:
    """Exotel's JSON sample with some values changed."""
    payload: dict[str, Any] = json.loads(JSON_SAMPLE)
    return payload | changes


def as_multipart(fields: Fields) -> dict[str, Any]:
    """httpx arguments for a real multipart/form-data body of plain fields (no files)."""
    return {"files": [(name, (None, value)) for name, value in fields]}


def as_urlencoded(fields: Fields) -> dict[str, Any]:
    return {
        "content": urlencode(fields).encode(),
        "headers": {"content-type": "application/x-www-form-urlencoded"},
    }


def form_of(request: httpx.Request) -> dict[str, str]:
    return {key: values[0] for key, values in parse_qs(request.content.decode()).items()}


async def place_calls(
    client: httpx.AsyncClient, exotel: respx.MockRouter, *sids: str
) -> list[tuple[dict[str, Any], str]]:
    """Place one call per Sid: each call's resource and the StatusCallback URL it was given."""
    answers = iter(sids)
    route = exotel.post("/connect.json").mock(
        side_effect=lambda request: httpx.Response(200, json=connect_answer(next(answers)))
    )
    placed = []
    for _ in sids:
        response = await client.post("/calls", json={"from": "+919876543210", "to": "09123456789"})
        assert response.status_code == 201
        placed.append((response.json(), form_of(route.calls.last.request)["StatusCallback"]))
    return placed


async def read_call(client: httpx.AsyncClient, ref: str) -> dict[str, Any]:
    response = await client.get(f"/calls/{ref}")
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


async def call_events(client: httpx.AsyncClient, ref: str) -> list[dict[str, Any]]:
    response = await client.get(f"/calls/{ref}/events")
    assert response.status_code == 200
    items: list[dict[str, Any]] = response.json()["items"]
    return items
