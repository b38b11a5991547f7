"""The Exotel client against Exotel at the HTTP boundary (respx): what it sends, how it
pages, where it may fetch recordings."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
import respx

from app.exotel.client import (
    EXOTEL_CONNECTIONS,
    ConnectRequest,
    ExotelClient,
    ExotelRefused,
    build_http_client,
    national_form,
)
from tests.conftest import EXOTEL_ACCOUNT, EXOTEL_BASE, EXOTEL_CALLS
from tests.exotel_samples import connect_answer
from tests.exotel_wire import EXOTEL_WIRE
from tests.limiters import Unlimited

REQUEST = ConnectRequest(
    from_number="+919876543210",
    to_number="+919123456789",
    caller_id="+918047112233",
    status_callback="http://callbridge.test/callbacks/exotel?token=t",
)
LISTING = f"{EXOTEL_CALLS}.json"


def call(sid: str) -> dict[str, object]:
    return {"Sid": sid, "Status": "completed", "To": "09123456789", "From": "09876543210"}


def form_of(request: httpx.Request) -> dict[str, str]:
    return {name: values[0] for name, values in parse_qs(request.content.decode()).items()}


@pytest.fixture
async def client() -> AsyncIterator[ExotelClient]:
    http = build_http_client(EXOTEL_BASE, api_key="key", api_token="token", timeout_s=5)
    async with http:
        yield ExotelClient(http, account_sid=EXOTEL_ACCOUNT, limiter=Unlimited())


@pytest.fixture
def exotel() -> Iterator[respx.MockRouter]:
    with respx.mock(using=EXOTEL_WIRE, assert_all_called=False) as router:
        yield router


# Connect.


async def test_connect_sends_the_caller_id_in_national_form_and_subscribes_answered(
    client: ExotelClient, exotel: respx.MockRouter
) -> None:
    route = exotel.post(f"{EXOTEL_CALLS}/connect.json").respond(200, json=connect_answer("a" * 32))

    await client.connect(REQUEST, asyncio.sleep(0))

    form = form_of(route.calls.last.request)
    assert form["CallerId"] == "08047112233"
    assert (form["From"], form["To"]) == ("+919876543210", "+919123456789")
    assert form["StatusCallbackEvents[0]"] == "terminal"
    assert form["StatusCallbackEvents[1]"] == "answered"


@pytest.mark.parametrize(
    ("number", "national"),
    [
        ("+918047112233", "08047112233"),
        ("+919876543210", "09876543210"),
        ("08047112233", "08047112233"),
    ],
)
def test_national_form(number: str, national: str) -> None:
    assert national_form(number) == national


# Bulk paging.

Shape = Callable[[str | None], dict[str, Any]]
NEXT = f"/v1/Accounts/{EXOTEL_ACCOUNT}/Calls.json?PageSize=1&AfterSid="


def metadata_shape(link: str | None) -> dict[str, Any]:
    return {"Metadata": {"Total": 3, "PageSize": 1, "NextPageUri": link}}


def top_level_shape(link: str | None) -> dict[str, Any]:
    return {"NextPageUri": link, "PrevPageUri": None}


def after_sid_shape(link: str | None) -> dict[str, Any]:
    return {"Metadata": {"PageSize": 1, "Page": 0, "NextPageUri": link}}


async def find(client: ExotelClient) -> list[str]:
    found = await client.find_calls(
        to_number="+919123456789",
        created_after=datetime(2026, 11, 27, tzinfo=UTC),
        created_before=datetime(2026, 11, 27, 1, tzinfo=UTC),
    )
    return [found_call.sid for found_call in found]


@pytest.mark.parametrize(
    "shape",
    [metadata_shape, top_level_shape, after_sid_shape],
    ids=["metadata", "top-level", "after-sid"],
)
async def test_bulk_paging_follows_each_documented_shape_past_empty_pages(
    client: ExotelClient, exotel: respx.MockRouter, shape: Shape
) -> None:
    pages = [
        {"Calls": [call("one")], **shape(NEXT + "one")},
        {"Calls": [], **shape(NEXT + "empty")},  # empty, yet not the last
        {"Calls": [call("two")], **shape(None)},
    ]
    route = exotel.get(LISTING).mock(side_effect=[httpx.Response(200, json=p) for p in pages])

    assert await find(client) == ["one", "two"]
    assert route.call_count == 3
    assert route.calls[2].request.url.params["AfterSid"] == "empty"


async def test_bulk_paging_is_bounded(client: ExotelClient, exotel: respx.MockRouter) -> None:
    pages = iter(range(10_000))
    route = exotel.get(LISTING).mock(
        side_effect=lambda _: httpx.Response(
            200, json={"Calls": [], **metadata_shape(NEXT + str(next(pages)))}
        )
    )

    assert await find(client) == []
    assert route.call_count == 50


async def test_bulk_paging_stops_at_a_link_it_already_followed(
    client: ExotelClient, exotel: respx.MockRouter
) -> None:
    page = {"Calls": [call("one")], **metadata_shape(NEXT + "one")}
    route = exotel.get(LISTING).respond(200, json=page)

    assert await find(client) == ["one", "one"]
    assert route.call_count == 2


async def test_a_next_link_to_another_host_is_not_followed(
    client: ExotelClient, exotel: respx.MockRouter
) -> None:
    elsewhere = exotel.get(host="attacker.example").respond(200, json={"Calls": []})
    page = {"Calls": [call("one")], **metadata_shape("https://attacker.example/v1/x")}
    exotel.get(LISTING).respond(200, json=page)

    assert await find(client) == ["one"]
    assert not elsewhere.called


async def test_an_absolute_next_link_on_our_host_is_followed(
    client: ExotelClient, exotel: respx.MockRouter
) -> None:
    pages = [
        {"Calls": [call("one")], **metadata_shape(f"{EXOTEL_BASE}{NEXT}one")},
        {"Calls": [call("two")], **metadata_shape(None)},
    ]
    exotel.get(LISTING).mock(side_effect=[httpx.Response(200, json=p) for p in pages])

    assert await find(client) == ["one", "two"]


# Bulk details by Sid.


async def test_bulk_details_by_sids_asks_for_at_most_100_sids_a_request_with_details(
    client: ExotelClient, exotel: respx.MockRouter
) -> None:
    sids = [f"sid{index:03}" for index in range(250)]

    def answer(request: httpx.Request) -> httpx.Response:
        asked = request.url.params["Sid"].split(",")
        return httpx.Response(200, json={"Calls": [call(sid) for sid in asked]})

    route = exotel.get(LISTING).mock(side_effect=answer)

    found = await client.bulk_details_by_sids([*sids, sids[0]])

    assert [found_call.call.sid for found_call in found] == sids
    asked = [request.url.params for request, _ in route.calls]
    assert [len(params["Sid"].split(",")) for params in asked] == [100, 100, 50]
    assert all(params["details"] == "true" for params in asked)


# Recordings.


@pytest.mark.parametrize(
    "url",
    [
        "https://attacker.example/rec.mp3",
        "http://recordings.exotel.com/exotelrecordings/a/b.mp3",  # not https
        "https://exotel.com.attacker.example/rec.mp3",
        "https://user:pass@recordings.exotel.com/rec.mp3",
        "https://recordings.exotel.com:8443/rec.mp3",
        "http://169.254.169.254/latest/meta-data",
    ],
)
async def test_recordings_are_never_fetched_from_elsewhere_with_our_credentials(
    client: ExotelClient, exotel: respx.MockRouter, url: str
) -> None:
    anywhere = exotel.route().respond(200)

    with pytest.raises(ExotelRefused):
        async with client.stream_recording(url):
            pass

    assert not anywhere.called


@pytest.mark.parametrize(
    "url",
    [
        "https://recordings.exotel.com/exotelrecordings/acct/sid.mp3",
        "https://s3.in.exotel.in/exotelrecordings/acct/sid.mp3",
        f"{EXOTEL_BASE}/exotelrecordings/acct/sid.wav",
    ],
)
async def test_a_recording_streams_from_exotel_with_credentials_and_range(
    client: ExotelClient, exotel: respx.MockRouter, url: str
) -> None:
    route = exotel.get(url).respond(
        206, content=b"abcd", headers={"Content-Range": "bytes 0-3/100"}
    )

    async with client.stream_recording(url, "bytes=0-3") as upstream:
        body = b"".join([chunk async for chunk in upstream.aiter_raw()])

    assert (upstream.status_code, body) == (206, b"abcd")
    sent = route.calls.last.request
    assert sent.headers["range"] == "bytes=0-3"
    assert sent.headers["authorization"].startswith("Basic ")
    assert sent.headers["accept-encoding"] == "identity"


async def test_a_missing_recording_is_refused_404(
    client: ExotelClient, exotel: respx.MockRouter
) -> None:
    url = "https://recordings.exotel.com/exotelrecordings/acct/gone.mp3"
    exotel.get(url).respond(404)

    with pytest.raises(ExotelRefused) as refused:
        async with client.stream_recording(url):
            pass

    assert refused.value.status == 404


# Connections.


async def test_connections_are_kept_for_as_many_requests_as_may_be_in_flight() -> None:
    """A burst of concurrent requests opens its connections once: the next burst reuses
    them all, where a smaller keep-alive pool would close some and open them again."""
    opened = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal opened
        opened += 1
        body = b'{"ok": true}'
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while await reader.readuntil(b"\r\n\r\n"):
                # Slow enough that the whole burst is in flight at once.
                await asyncio.sleep(0.05)
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
                )
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    in_flight = EXOTEL_CONNECTIONS - 10
    try:
        async with build_http_client(
            f"http://127.0.0.1:{port}", api_key="key", api_token="token", timeout_s=5
        ) as http:
            for _ in range(2):
                answers = await asyncio.gather(*(http.get("/") for _ in range(in_flight)))
                assert {answer.status_code for answer in answers} == {200}
                assert opened == in_flight
    finally:
        server.close()
        await server.wait_closed()
