"""POST /calls and GET /calls against hostile input: numbers in disguise, internal notify URLs.

Issue 11, items 3 (the POST /calls side; delivery is in tests/jobs/test_notify_guard.py)
and 11.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import respx
from fastapi import FastAPI

from app.main import create_app
from tests.conftest import WRITER_KEY, make_settings
from tests.exotel_samples import connect_answer

SID = "c5797dcbaaeed7678c4062a4a3ed2f8a"
VALID = {"from": "+919876543210", "to": "09123456789"}


async def assert_refused(
    client: httpx.AsyncClient, exotel: respx.MockRouter, change: dict[str, Any], field: str
) -> dict[str, Any]:
    route = exotel.post("/connect.json").respond(200, json=connect_answer(SID))
    response = await client.post("/calls", json={**VALID, **change})
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem: dict[str, Any] = response.json()
    assert [error["field"] for error in problem["errors"]] == [field]
    assert route.call_count == 0
    return problem


@pytest.mark.parametrize("field", ["from", "to", "caller_id"])
@pytest.mark.parametrize(
    "number",
    [
        "98765abcde",  # keypad letters: once dialled as +919876522233
        "+91 98765 43210 ext. 12",
        "+91 98765 43210 x12",
        "+919876543210;ext=12",
        "+919876543210,12",
        "+919876543210#",
        "*99#",
        "91+9876543210",
        "++919876543210",
        "+91\u00a098765\u00a043210",  # no-break spaces
        "\u0669\u0668\u0667\u0666\u0665\u0664\u0663\u0662\u0661\u0660",  # Arabic-Indic digits
        "+91/9876543210",
    ],
)
async def test_numbers_with_anything_but_digits_and_separators_are_refused(
    client: httpx.AsyncClient, exotel: respx.MockRouter, field: str, number: str
) -> None:
    problem = await assert_refused(client, exotel, {field: number}, field)
    assert "no letters" in problem["errors"][0]["message"]


@pytest.mark.parametrize(
    "number", ["+91 98765 43210", "+91-98765-43210", "(098765) 43210", "098.7654.3210"]
)
async def test_numbers_with_spaces_dashes_dots_and_parentheses_are_accepted(
    client: httpx.AsyncClient, exotel: respx.MockRouter, number: str
) -> None:
    exotel.post("/connect.json").respond(200, json=connect_answer(SID))
    response = await client.post("/calls", json={**VALID, "from": number})
    assert response.status_code == 201
    assert response.json()["from"] == "+919876543210"


@pytest.mark.parametrize("field", ["from", "to"])
async def test_list_filters_refuse_letters_too(client: httpx.AsyncClient, field: str) -> None:
    response = await client.get("/calls", params={field: "98765abcde"})
    assert response.status_code == 422
    assert [error["field"] for error in response.json()["errors"]] == [field]
    accepted = await client.get("/calls", params={field: "+91 98765-43210"})
    assert accepted.status_code == 200


REFUSED_NOTIFY_URLS = [
    "http://127.0.0.1:5432/",
    "http://127.8.9.10/hooks",
    "http://localhost/hooks",
    "http://LOCALHOST./hooks",
    "http://api.localhost/hooks",
    "http://0.0.0.0/hooks",
    "http://2130706433/hooks",
    "http://0x7f000001/hooks",
    "http://0x7f.1/hooks",
    "http://127.1/hooks",
    "http://%31%32%37.0.0.1/hooks",
    "http://[::1]/hooks",
    "http://[::]/hooks",
    "http://[::ffff:127.0.0.1]/hooks",
    "http://[::ffff:7f00:1]/hooks",
    "http://[64:ff9b::a9fe:a9fe]/hooks",
    "http://[2002:7f00:1::]/hooks",
    "http://169.254.169.254/latest/meta-data/",
    "http://[fe80::1]/hooks",
    "http://10.0.0.8/hooks",
    "http://172.16.0.1/hooks",
    "http://192.168.1.1/hooks",
    "http://100.64.0.1/hooks",
    "http://224.0.0.1/hooks",
    "http://240.0.0.1/hooks",
    "http://255.255.255.255/hooks",
    "https://user:secret@hooks.example.com/calls",
    "https://:secret@hooks.example.com/calls",
    "https://token@hooks.example.com/calls",
]


@pytest.mark.parametrize("url", REFUSED_NOTIFY_URLS)
async def test_notify_urls_to_internal_addresses_are_refused(
    client: httpx.AsyncClient, exotel: respx.MockRouter, url: str
) -> None:
    await assert_refused(client, exotel, {"notify_url": url}, "notify_url")


@pytest.mark.parametrize(
    "url",
    ["https://hooks.example.com/calls", "http://93.184.215.14:8080/x", "https://[2606:4700::1]/"],
)
async def test_public_notify_urls_are_accepted(
    client: httpx.AsyncClient, exotel: respx.MockRouter, url: str
) -> None:
    exotel.post("/connect.json").respond(200, json=connect_answer(SID))
    response = await client.post("/calls", json={**VALID, "notify_url": url})
    assert response.status_code == 201


@pytest.fixture
async def allowing_loopback(database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """The app with NOTIFY_ALLOWED_HOSTS naming 127.0.0.1 and [::1]."""
    settings = make_settings(database_url, notify_allowed_hosts="127.0.0.1, [::1]")
    app: FastAPI = create_app(settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://callbridge.test",
            headers={"Authorization": f"Bearer {WRITER_KEY}"},
        ) as client,
    ):
        yield client


@pytest.mark.parametrize("url", ["http://127.0.0.1:8123/hooks", "http://[::1]:8123/hooks"])
async def test_allowed_hosts_may_be_named(
    allowing_loopback: httpx.AsyncClient, exotel: respx.MockRouter, url: str
) -> None:
    exotel.post("/connect.json").respond(200, json=connect_answer(SID))
    response = await allowing_loopback.post("/calls", json={**VALID, "notify_url": url})
    assert response.status_code == 201


@pytest.mark.parametrize(
    "url",
    [
        "http://localhost:8123/hooks",
        "http://2130706433:8123/hooks",
        "http://0x7f000001:8123/hooks",
        "http://[::ffff:127.0.0.1]:8123/hooks",
        "http://127.0.0.2:8123/hooks",
        "http://user:pw@127.0.0.1:8123/hooks",
    ],
)
async def test_other_spellings_of_an_allowed_host_stay_refused(
    allowing_loopback: httpx.AsyncClient, exotel: respx.MockRouter, url: str
) -> None:
    await assert_refused(allowing_loopback, exotel, {"notify_url": url}, "notify_url")


@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"],
)
async def test_a_body_not_sent_as_json_is_refused_with_415(
    client: httpx.AsyncClient, exotel: respx.MockRouter, content_type: str | None
) -> None:
    route = exotel.post("/connect.json").respond(200, json=connect_answer(SID))
    body = '{"from": "+919876543210", "to": "09123456789"}'
    headers = {} if content_type is None else {"content-type": content_type}

    response = await client.post("/calls", content=body, headers=headers)

    assert response.status_code == 415, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["type"].endswith("/unsupported-media-type")
    assert route.call_count == 0


@pytest.mark.parametrize(
    "content_type", ["application/json", "application/json; charset=utf-8", "application/x+json"]
)
async def test_json_is_accepted(
    client: httpx.AsyncClient, exotel: respx.MockRouter, content_type: str
) -> None:
    exotel.post("/connect.json").respond(200, json=connect_answer(SID))
    body = b'{"from": "+919876543210", "to": "09123456789"}'

    response = await client.post("/calls", content=body, headers={"content-type": content_type})

    assert response.status_code == 201, response.text
