"""What the live Exotel API does that its samples do not show, and the simulator must do
too (issue 10, facts file "What the live API does that the samples don't show")."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta
from typing import Any
from xml.etree import ElementTree

import httpx
import pytest

from app.exotel.callbacks import parse_callback
from app.exotel.schemas import EXOTEL_TIMEZONE
from app.exotel.simulator import Simulator, SimulatorConfig
from tests.simulator.conftest import (
    CALLS,
    FAST,
    NATIONAL_FROM,
    NATIONAL_NORMAL_TO,
    CallbackReceiver,
    callback_fields,
    connect,
    connect_form,
    details,
    rest_exception,
    wait_until_ended,
)

CONNECT_SAMPLE_KEYS = [
    "Sid",
    "ParentCallSid",
    "DateCreated",
    "DateUpdated",
    "AccountSid",
    "To",
    "From",
    "PhoneNumberSid",
    "Status",
    "StartTime",
    "EndTime",
    "Duration",
    "Price",
    "Direction",
    "AnsweredBy",
    "ForwardedFrom",
    "CallerName",
    "Uri",
    "RecordingUrl",
]


def window(start: datetime, end: datetime) -> str:
    return f"gte:{start:%Y-%m-%d %H:%M:%S};lte:{end:%Y-%m-%d %H:%M:%S}"


# The connect answer.


async def test_connect_without_json_answers_exotels_xml(exotel: httpx.AsyncClient) -> None:
    response = await exotel.post(f"{CALLS}/connect", data=connect_form())

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/xml")
    root = ElementTree.fromstring(response.content)  # noqa: S314 - our simulator wrote it
    assert root.tag == "TwilioResponse"
    [call] = list(root)
    assert call.tag == "Call"
    fields = {child.tag: child.text for child in call}
    assert list(fields) == CONNECT_SAMPLE_KEYS
    assert fields["Status"] == "in-progress"
    assert (fields["From"], fields["To"]) == (NATIONAL_FROM, NATIONAL_NORMAL_TO)
    assert fields["EndTime"] is None  # <EndTime/>, as in the sample
    assert fields["Uri"] == f"{CALLS}/{fields['Sid']}"


async def test_connect_without_json_answers_errors_in_xml(exotel: httpx.AsyncClient) -> None:
    response = await exotel.post(f"{CALLS}/connect", data=connect_form("+918867999905"))

    assert response.status_code == 403
    error = ElementTree.fromstring(response.content).find("RestException")  # noqa: S314
    assert error is not None
    assert error.findtext("Message") == (
        "Call to [08867999905] cannot be made because of TRAI NDNC regulations"
    )
    assert error.find("Code") is None


# Callbacks.


async def test_answered_is_not_sent_unless_subscribed(
    exotel: httpx.AsyncClient, receiver: CallbackReceiver
) -> None:
    sid = await connect(exotel)  # StatusCallbackEvents[0]=terminal only

    await wait_until_ended(exotel, sid)
    await asyncio.sleep(0.05)

    assert [(await callback_fields(r))["EventType"] for r in receiver.requests] == ["terminal"]


async def test_callbacks_answered_by_is_na_for_the_first_leg_and_human_for_the_to_leg(
    exotel: httpx.AsyncClient, receiver: CallbackReceiver
) -> None:
    await connect(exotel, StatusCallbackContentType="application/json")

    [request] = await receiver.wait_for(1)

    legs = (await callback_fields(request))["Legs"]
    assert [leg["AnsweredBy"] for leg in legs] == ["NA", "HUMAN"]
    parsed = await parse_callback(request.content, request.headers["content-type"])
    assert (parsed.to, parsed.from_) == (NATIONAL_NORMAL_TO, NATIONAL_FROM)


@pytest.mark.parametrize("to", ["+918867999901", "+918867999902", "+918867999903"])
async def test_nobody_is_human_on_a_call_the_to_leg_never_answered(
    exotel: httpx.AsyncClient, receiver: CallbackReceiver, to: str
) -> None:
    sid = await connect(exotel, to=to, StatusCallbackContentType="application/json")

    [request] = await receiver.wait_for(1)

    legs = (await callback_fields(request))["Legs"]
    assert legs[0]["AnsweredBy"] == "NA"
    assert "AnsweredBy" not in legs[1]
    assert (await details(exotel, sid))["AnsweredBy"] is None


async def test_the_answer_of_9909_is_lost_before_its_call_ends(
    exotel: httpx.AsyncClient, receiver: CallbackReceiver
) -> None:
    # So that Callbridge waits out EXOTEL_TIMEOUT_S (504) rather than learn the outcome
    # from a callback that came in time.
    form = connect_form("+918867999909", **{"StatusCallbackEvents[1]": "answered"})
    with pytest.raises(httpx.RemoteProtocolError):
        await exotel.post(f"{CALLS}/connect.json", data=form)
    assert receiver.requests == []

    [callback] = await receiver.wait_for(1)
    await asyncio.sleep(0.05)

    # The `answered` event is lost with the answer: only the end is ever told.
    assert len(receiver.requests) == 1
    fields = await callback_fields(callback)
    assert (fields["EventType"], fields["Status"]) == ("terminal", "completed")


async def test_lost_answer_on_a_long_call_talks_until_the_time_limit(
    exotel: httpx.AsyncClient, receiver: CallbackReceiver
) -> None:
    form = connect_form("+918867999916", TimeLimit="90")

    with pytest.raises(httpx.RemoteProtocolError):
        await exotel.post(f"{CALLS}/connect.json", data=form)
    [callback] = await receiver.wait_for(1)

    fields = await callback_fields(callback)
    assert (fields["Status"], fields["ConversationDuration"]) == ("completed", "90")


async def test_lost_answer_on_a_long_call_without_time_limit_is_still_talking(
    exotel: httpx.AsyncClient, receiver: CallbackReceiver
) -> None:
    with pytest.raises(httpx.RemoteProtocolError):
        await exotel.post(f"{CALLS}/connect.json", data=connect_form("+918867999916"))

    # Exotel's 4 hours are 14.4 s here: long after the dropped answer, nothing is known.
    await asyncio.sleep(0.3)
    assert receiver.requests == []
    listing = await exotel.get(f"{CALLS}.json", params={"To": "+918867999916"})
    assert listing.json()["Calls"] == []


# Call details.

SLOW_FIGURES = SimulatorConfig(speed=1000.0, figures_delay_s=300)


@pytest.mark.parametrize("simulator_config", [SLOW_FIGURES], indirect=True)
async def test_duration_price_and_end_time_come_some_time_after_the_end(
    exotel: httpx.AsyncClient, receiver: CallbackReceiver
) -> None:
    sid = await connect(exotel)
    await receiver.wait_for(1)
    ended_at = time.monotonic()

    just_ended = await details(exotel, sid)
    final = await wait_until_ended(exotel, sid)

    assert just_ended["Status"] == "completed"
    assert (just_ended["Duration"], just_ended["Price"], just_ended["EndTime"]) == (None,) * 3
    assert just_ended["Details"]["Legs"][1]["Leg"]["OnCallDuration"] > 0
    assert final["Duration"] is not None
    assert final["Price"] is not None
    # 300 simulated seconds at 1000 times real speed, counted from the end of the call.
    assert time.monotonic() - ended_at >= 0.2


# Bulk call details.

LONG_CALLS = SimulatorConfig(speed=1.0)


@pytest.mark.parametrize("simulator_config", [LONG_CALLS], indirect=True)
async def test_bulk_details_never_list_an_ongoing_call(exotel: httpx.AsyncClient) -> None:
    sid = await connect(exotel)

    listing = await exotel.get(f"{CALLS}.json", params={"Sid": sid})

    assert listing.status_code == 200
    assert listing.json()["Calls"] == []
    assert (await details(exotel, sid))["Status"] == "in-progress"


async def next_link(page: dict[str, Any]) -> str | None:
    metadata = page.get("Metadata") or {}
    found: str | None = metadata.get("NextPageUri") or page.get("NextPageUri")
    return found


@pytest.mark.parametrize(
    ("simulator_config", "shape"),
    [
        (FAST, {"Metadata": {"Total", "PageSize", "FirstPageUri", "PrevPageUri", "NextPageUri"}}),
        (
            SimulatorConfig(speed=1000.0, figures_delay_s=5, paging="top-level"),
            {"NextPageUri": None, "PrevPageUri": None},
        ),
        (
            SimulatorConfig(speed=1000.0, figures_delay_s=5, paging="after-sid"),
            {"Metadata": {"PageSize", "Page", "NextPageUri"}},
        ),
    ],
    indirect=["simulator_config"],
    ids=["metadata", "top-level", "after-sid"],
)
async def test_bulk_details_page_in_each_documented_shape(
    exotel: httpx.AsyncClient, shape: dict[str, Any]
) -> None:
    sids = [await connect(exotel, to="+918867990001") for _ in range(3)]
    for sid in sids:
        await wait_until_ended(exotel, sid)

    pages = []
    response = await exotel.get(f"{CALLS}.json", params={"To": "+918867990001", "PageSize": "2"})
    while True:
        assert response.status_code == 200, response.text
        pages.append(response.json())
        link = await next_link(pages[-1])
        if link is None:
            break
        response = await exotel.get(link)

    assert [sid for page in pages for sid in (call["Sid"] for call in page["Calls"])] == sids[::-1]
    first = pages[0]
    assert set(first) == {"Calls", *shape}
    if isinstance(shape.get("Metadata"), set):
        assert set(first["Metadata"]) == shape["Metadata"]
    if "Page" in first.get("Metadata", {}):
        assert "AfterSid=" in first["Metadata"]["NextPageUri"]


@pytest.mark.parametrize(
    ("start_days_ago", "end_days_ago", "message"),
    [(40, 0, "one month"), (200, 190, "six months")],
    ids=["wider-than-a-month", "older-than-six-months"],
)
async def test_bulk_details_enforce_exotels_date_window(
    exotel: httpx.AsyncClient, start_days_ago: int, end_days_ago: int, message: str
) -> None:
    now = datetime.now(EXOTEL_TIMEZONE)
    span = window(now - timedelta(days=start_days_ago), now - timedelta(days=end_days_ago))

    response = await exotel.get(f"{CALLS}.json", params={"DateCreated": span})

    assert response.status_code == 400
    _, text, _ = rest_exception(response)
    assert text is not None
    assert message in text


# Test support routes.


@pytest.mark.parametrize("method", ["GET", "DELETE"])
async def test_recorded_requests_need_the_simulators_credentials(
    simulator: Simulator, exotel: httpx.AsyncClient, method: str
) -> None:
    await connect(exotel)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=simulator.app), base_url="http://sim"
    ) as anonymous:
        response = await anonymous.request(method, "/_sim/requests")

    assert response.status_code == 401
    assert "StatusCallback" not in response.text
    assert len(simulator.connect_requests) == 1
