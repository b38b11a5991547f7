"""GET /calls: filters and newest-first cursor pagination over real rows."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import httpx
import psycopg
import pytest

from tests.conftest import READER_KEY


def insert_calls(database_url: str, rows: list[dict[str, Any]]) -> None:
    with psycopg.connect(database_url.replace("postgresql+psycopg://", "postgresql://")) as conn:
        for row in rows:
            conn.execute(
                "INSERT INTO calls (id, sid, status, from_number, to_number, caller_id,"
                " custom_field, api_client, created_at, updated_at)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, 'orders', %s, %s)",
                (
                    row["id"],
                    row.get("sid"),
                    row.get("status", "completed"),
                    row.get("from", "+919876543210"),
                    row.get("to", "+919123456789"),
                    "+918047112233",
                    row.get("custom_field"),
                    row["created_at"],
                    row["created_at"],
                ),
            )


@pytest.fixture
def reader(client: httpx.AsyncClient) -> httpx.AsyncClient:
    client.headers["Authorization"] = f"Bearer {READER_KEY}"
    return client


async def read_all(client: httpx.AsyncClient, params: dict[str, Any]) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        page_params = {**params, "cursor": cursor} if cursor else params
        response = await client.get("/calls", params=page_params)
        assert response.status_code == 200, response.text
        page = response.json()
        assert len(page["items"]) <= params.get("limit", 50)
        items.extend(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            return items


async def test_pages_through_more_rows_than_a_page_without_gaps_or_duplicates(
    reader: httpx.AsyncClient, database_url: str
) -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    # Several rows share a created_at, so the id must break ties.
    rows = [
        {"id": uuid.uuid4(), "sid": f"sid{n}", "created_at": start + timedelta(seconds=n // 3)}
        for n in range(53)
    ]
    insert_calls(database_url, rows)

    items = await read_all(reader, {"limit": 7})

    assert len(items) == 53
    assert len({item["id"] for item in items}) == 53
    expected = sorted(rows, key=lambda row: (row["created_at"], row["id"]), reverse=True)
    assert [item["id"] for item in items] == [str(row["id"]) for row in expected]


async def test_filters(reader: httpx.AsyncClient, database_url: str) -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    insert_calls(
        database_url,
        [
            {"id": uuid.uuid4(), "created_at": start, "status": "busy", "custom_field": "a"},
            {
                "id": uuid.uuid4(),
                "created_at": start + timedelta(hours=1),
                "to": "+919000000001",
                "custom_field": "b",
            },
            {
                "id": uuid.uuid4(),
                "created_at": start + timedelta(hours=2),
                "from": "+919000000002",
            },
        ],
    )

    async def custom_fields(**params: str) -> list[str | None]:
        response = await reader.get("/calls", params=params)
        assert response.status_code == 200, response.text
        return [item["custom_field"] for item in response.json()["items"]]

    assert await custom_fields(status="busy") == ["a"]
    assert await custom_fields(to="09000000001") == ["b"]
    assert await custom_fields(**{"from": "+919000000002"}) == [None]
    assert await custom_fields(custom_field="b") == ["b"]
    after = (start + timedelta(minutes=30)).isoformat()
    before = (start + timedelta(minutes=90)).isoformat()
    assert await custom_fields(created_after=after, created_before=before) == ["b"]
    assert len(await custom_fields()) == 3


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "201"}, "limit"),
        ({"cursor": "garbage!"}, "cursor"),
        ({"to": "12"}, "to"),
        ({"created_after": "yesterday"}, "created_after"),
    ],
)
async def test_rejects_bad_list_parameters(
    reader: httpx.AsyncClient, params: dict[str, str], field: str
) -> None:
    response = await reader.get("/calls", params=params)
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert field in [error["field"] for error in response.json()["errors"]]


async def test_unknown_call_is_404_problem(reader: httpx.AsyncClient) -> None:
    for ref in ("no-such-sid", str(uuid.uuid4())):
        response = await reader.get(f"/calls/{ref}")
        assert response.status_code == 404
        assert response.headers["content-type"] == "application/problem+json"


async def test_unknown_route_is_a_problem(reader: httpx.AsyncClient) -> None:
    response = await reader.get("/nowhere")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["status"] == 404


@pytest.mark.parametrize(
    ("ref", "authorization"),
    [
        ("x" * 65, f"Bearer {READER_KEY}"),  # too long
        ("CA\x00" + "1" * 8, f"Bearer {READER_KEY}"),  # a NUL
        ("no-such-sid", None),  # no key
        ("no-such-sid", "Bearer not-a-key"),  # an unknown key
        ("no-such-sid", f"Basic {READER_KEY}"),  # not a Bearer key
        ("x" * 65, None),  # the key is checked first
    ],
)
async def test_read_refuses_what_the_other_reads_refuse(
    client: httpx.AsyncClient, ref: str, authorization: str | None
) -> None:
    """GET /calls/{ref} checks its key and ref itself (it skips FastAPI's parameters for
    speed): its refusals are the ones FastAPI gives GET /calls/{ref}/events."""
    headers = {"Authorization": authorization} if authorization else {}
    del client.headers["Authorization"]
    read = await client.get(f"/calls/{quote(ref)}", headers=headers)
    events = await client.get(f"/calls/{quote(ref)}/events", headers=headers)
    assert read.status_code in (401, 422)
    assert (read.status_code, read.json()) == (events.status_code, events.json())
    assert read.headers["content-type"] == "application/problem+json"
    assert read.headers.get("www-authenticate") == events.headers.get("www-authenticate")
