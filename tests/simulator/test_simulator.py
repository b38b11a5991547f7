"""The Exotel simulator speaks Exotel's shapes: its answers parse with our Exotel models,
and its callbacks carry the keys of the samples on Exotel's connect API page."""

from __future__ import annotations

import asyncio
import re
import time
from datetime import datetime, timedelta
from decimal import Decimal

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from app.exotel.schemas import EXOTEL_TIMEZONE, ExotelCallEnvelope, ExotelCallList
from app.exotel.simulator import Simulator
from tests.simulator.conftest import (
    ACCOUNT,
    CALLBACK_URL,
    CALLS,
    CREDENTIALS,
    EXOTEL_TIME,
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

# The keys of the sample callbacks at the end of Exotel's connect API page.
FORM_SAMPLE_KEYS = {
    "CallSid",
    "EventType",
    "From",
    "To",
    "PhoneNumberSid",
    "Status",
    "Direction",
    "DateCreated",
    "DateUpdated",
    "StartTime",
    "EndTime",
    "RecordingUrl",
    "ConversationDuration",
    "Legs[0][Status]",
    "Legs[0][OnCallDuration]",
    "Legs[1][Status]",
    "Legs[1][OnCallDuration]",
}
JSON_SAMPLE_KEYS = {
    "CallSid",
    "EventType",
    "DateCreated",
    "DateUpdated",
    "Status",
    "To",
    "From",
    "PhoneNumberSid",
    "StartTime",
    "EndTime",
    "Direction",
    "RecordingUrl",
    "ConversationDuration",
    "Legs",
}
JSON_SAMPLE_LEG_KEYS = {"OnCallDuration", "Status"}
# The keys of the sample connect answer on the same page.
CONNECT_SAMPLE_KEYS = {
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
}


# Authentication and validation.


@pytest.mark.parametrize(
    ("account", "credentials"),
    [
        pytest.param(ACCOUNT, None, id="no-credentials"),
        pytest.param(ACCOUNT, ("sim-key", "wrong"), id="wrong-token"),
        pytest.param("someone-else", CREDENTIALS, id="other-account"),
    ],
)
@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/Calls/connect.json"), ("GET", "/Calls/abc.json"), ("GET", "/Calls.json")],
)
async def test_every_api_requires_the_account_credentials(
    simulator: Simulator,
    account: str,
    credentials: tuple[str, str] | None,
    method: str,
    path: str,
) -> None:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=simulator.app), base_url="http://sim"
    ) as anonymous:
        response = await anonymous.request(
            method, f"/v1/Accounts/{account}{path}", data=connect_form(), auth=credentials
        )

    assert response.status_code == 401
    # Exotel's documented 401: no Code.
    assert response.json() == {
        "RestException": {
            "Status": 401,
            "Message": "Authentication failed. Check your API key and token.",
        }
    }


@pytest.mark.parametrize("missing", ["From", "To", "CallerId"])
async def test_connect_without_a_mandatory_field_is_400_naming_it(
    exotel: httpx.AsyncClient, missing: str
) -> None:
    form = connect_form()
    del form[missing]

    response = await exotel.post(f"{CALLS}/connect.json", data=form)

    assert response.status_code == 400
    status, message, _ = rest_exception(response)
    assert status == 400
    assert message is not None
    assert missing in message


# The connect answer and the call timeline.


async def test_connect_answers_in_the_shape_of_exotels_sample(exotel: httpx.AsyncClient) -> None:
    before = datetime.now(EXOTEL_TIMEZONE).replace(microsecond=0)

    response = await exotel.post(f"{CALLS}/connect.json", data=connect_form())

    assert response.status_code == 200
    call = response.json()["Call"]
    assert set(call) == CONNECT_SAMPLE_KEYS
    assert re.fullmatch(r"[0-9a-f]{32}", call["Sid"])
    assert call["Status"] == "in-progress"
    assert call["Direction"] == "outbound-api"
    assert call["AccountSid"] == ACCOUNT
    # Exotel echoes numbers in national form, whatever form they were sent in.
    assert (call["From"], call["To"], call["PhoneNumberSid"]) == (
        NATIONAL_FROM,
        NATIONAL_NORMAL_TO,
        "08047112233",
    )
    assert call["Uri"] == f"/v1/Accounts/{ACCOUNT}/Calls.json/{call['Sid']}"
    for absent in ("EndTime", "Duration", "Price", "RecordingUrl", "ParentCallSid"):
        assert call[absent] is None
    for moment in ("DateCreated", "DateUpdated", "StartTime"):
        assert EXOTEL_TIME.match(call[moment])
    parsed = ExotelCallEnvelope.model_validate(response.json()).call
    assert parsed.date_created is not None
    assert before <= parsed.date_created <= before + timedelta(seconds=2)


async def test_details_follow_the_call_from_in_progress_to_completed(
    exotel: httpx.AsyncClient,
) -> None:
    sid = await connect(exotel, Record="true")

    during = await details(exotel, sid)
    final = await wait_until_ended(exotel, sid)

    assert (during["Status"], during["Duration"], during["Price"]) == ("in-progress", None, None)
    assert final["Status"] == "completed"
    assert isinstance(final["Duration"], str)
    assert isinstance(final["Price"], str)
    assert re.fullmatch(r"\d+\.\d{3}", final["Price"])
    assert final["RecordingUrl"] == f"http://sim/exotelrecordings/{ACCOUNT}/{sid}.wav"
    assert final["AnsweredBy"] == "human"
    legs = final["Details"]["Legs"]
    assert [leg["Leg"]["Id"] for leg in legs] == [1, 2]
    parsed = ExotelCallEnvelope.model_validate({"Call": final}).call
    assert parsed.start_time is not None
    assert parsed.end_time is not None
    assert parsed.duration == (parsed.end_time - parsed.start_time).total_seconds()
    assert parsed.price is not None
    assert parsed.price > Decimal(0)
    update = parsed.to_update()
    assert update.conversation_duration == legs[1]["Leg"]["OnCallDuration"]
    assert 20 <= (update.conversation_duration or 0) <= 60
    assert [(leg.leg, leg.status) for leg in update.legs] == [(0, "completed"), (1, "completed")]


async def test_details_of_an_unknown_call_is_404(exotel: httpx.AsyncClient) -> None:
    response = await exotel.get(f"{CALLS}/{'0' * 32}.json")

    assert response.status_code == 404
    assert rest_exception(response)[0] == 404


# Status callbacks.


async def test_normal_call_posts_a_multipart_callback_with_the_form_samples_keys(
    exotel: httpx.AsyncClient, receiver: CallbackReceiver
) -> None:
    sid = await connect(exotel, Record="true")

    [callback] = await receiver.wait_for(1)

    assert str(callback.url) == CALLBACK_URL
    fields = await callback_fields(callback)
    assert set(fields) == FORM_SAMPLE_KEYS | {"Legs[0][AnsweredBy]", "Legs[1][AnsweredBy]"}
    assert fields["CallSid"] == sid
    assert fields["EventType"] == "terminal"
    assert fields["Status"] == "completed"
    assert fields["Legs[0][Status]"] == fields["Legs[1][Status]"] == "completed"
    assert (fields["Legs[0][AnsweredBy]"], fields["Legs[1][AnsweredBy]"]) == ("NA", "HUMAN")
    assert fields["ConversationDuration"] == fields["Legs[1][OnCallDuration]"]
    assert int(fields["Legs[0][OnCallDuration]"]) > int(fields["Legs[1][OnCallDuration]"])
    assert fields["RecordingUrl"] == f"http://sim/exotelrecordings/{ACCOUNT}/{sid}.wav"
    assert EXOTEL_TIME.match(fields["EndTime"])


async def test_json_callback_has_the_json_samples_keys_and_nulls_for_absent_values(
    exotel: httpx.AsyncClient, receiver: CallbackReceiver
) -> None:
    await connect(
        exotel, to="+918867999902", StatusCallbackContentType="application/json", CustomField="o-42"
    )

    [callback] = await receiver.wait_for(1)

    fields = await callback_fields(callback)
    assert set(fields) == JSON_SAMPLE_KEYS | {"CustomField"}
    assert fields["CustomField"] == "o-42"
    assert fields["RecordingUrl"] is None
    assert fields["ConversationDuration"] == 0
    assert [set(leg) for leg in fields["Legs"]] == [
        JSON_SAMPLE_LEG_KEYS | {"AnsweredBy"},
        JSON_SAMPLE_LEG_KEYS,
    ]


async def test_without_subscribed_events_a_callback_has_only_the_basic_fields(
    exotel: httpx.AsyncClient, receiver: CallbackReceiver
) -> None:
    form = connect_form(StatusCallbackContentType="application/json")
    del form["StatusCallbackEvents[0]"]
    await exotel.post(f"{CALLS}/connect.json", data=form)

    [callback] = await receiver.wait_for(1)

    fields = await callback_fields(callback)
    assert set(fields) == {"CallSid", "DateUpdated", "Status", "RecordingUrl"}
    assert fields["Status"] == "completed"


async def test_answered_event_is_posted_when_both_legs_connect(
    exotel: httpx.AsyncClient, receiver: CallbackReceiver
) -> None:
    await connect(exotel, CustomField="o-7", **{"StatusCallbackEvents[1]": "answered"})

    answered, terminal = [await callback_fields(r) for r in await receiver.wait_for(2)]

    assert (answered["EventType"], answered["Status"]) == ("answered", "in-progress")
    assert answered["Legs[1][Status]"] == "in-progress"
    assert "CustomField" not in answered
    assert (terminal["EventType"], terminal["Status"]) == ("terminal", "completed")
    assert terminal["CustomField"] == "o-7"


@pytest.mark.parametrize(
    ("to", "status", "caller_status", "callee_status"),
    [
        pytest.param("+918867999901", "busy", "completed", "busy", id="busy"),
        pytest.param("+918867999902", "no-answer", "completed", "no-answer", id="no-answer"),
        pytest.param("+918867999903", "failed", "completed", "failed", id="failed"),
        pytest.param("+918867999904", "no-answer", "no-answer", None, id="never-attempted"),
    ],
)
async def test_unconnected_calls_report_each_legs_outcome(
    exotel: httpx.AsyncClient,
    receiver: CallbackReceiver,
    to: str,
    status: str,
    caller_status: str,
    callee_status: str | None,
) -> None:
    sid = await connect(exotel, to=to, StatusCallbackContentType="application/json", Record="true")

    [callback] = await receiver.wait_for(1)

    fields = await callback_fields(callback)
    caller, callee = fields["Legs"]
    assert (fields["Status"], caller["Status"], callee["Status"]) == (
        status,
        caller_status,
        callee_status,
    )
    assert fields["ConversationDuration"] == callee["OnCallDuration"] == 0
    assert fields["RecordingUrl"] is None
    assert "AnsweredBy" not in callee
    # The From leg was on the call while To rang, unless it never answered.
    assert (caller["OnCallDuration"] > 0) is (caller_status == "completed")
    final = await details(exotel, sid)
    assert (final["Details"]["Leg1Status"], final["Details"]["Leg2Status"]) == (
        caller_status,
        callee_status,
    )


async def test_never_attempted_callee_is_empty_in_the_form_callback(
    exotel: httpx.AsyncClient, receiver: CallbackReceiver
) -> None:
    await connect(exotel, to="+918867999904")

    [callback] = await receiver.wait_for(1)

    fields = await callback_fields(callback)
    # Exactly the form sample, which shows this very case.
    assert set(fields) == FORM_SAMPLE_KEYS
    assert (fields["Legs[0][Status]"], fields["Legs[1][Status]"]) == ("no-answer", "")
    assert fields["Legs[1][OnCallDuration]"] == "0"
    assert fields["RecordingUrl"] == ""


async def test_receiver_errors_are_retried_twice(
    exotel: httpx.AsyncClient, receiver: CallbackReceiver
) -> None:
    receiver.answers = [500, 503]

    await connect(exotel)
    await receiver.wait_for(3)
    await asyncio.sleep(0.02)

    assert len(receiver.requests) == 3
    assert len({request.content for request in receiver.requests}) == 1


async def test_delivery_gives_up_after_three_attempts(
    exotel: httpx.AsyncClient, receiver: CallbackReceiver
) -> None:
    receiver.answers = [500] * 5

    await connect(exotel)
    await receiver.wait_for(3)
    await asyncio.sleep(0.05)

    assert len(receiver.requests) == 3


async def test_connection_errors_are_retried(
    exotel: httpx.AsyncClient, receiver: CallbackReceiver
) -> None:
    receiver.refusals = 2

    await connect(exotel, to="+918867999903")
    await receiver.wait_for(3)
    await asyncio.sleep(0.02)

    assert len(receiver.requests) == 3
    assert receiver.refusals == 0


# Scenarios chosen by the callee's number.


@pytest.mark.parametrize(
    ("to", "status", "message", "code"),
    [
        pytest.param(
            "+918867999905",
            403,
            "Call to [08867999905] cannot be made because of TRAI NDNC regulations",
            None,
            id="dnd",
        ),
        pytest.param("+918867999914", 403, "Account is not KYC compliant", 403, id="kyc"),
        pytest.param(
            "+918867999906",
            429,
            "Rate limit exceeded. Try again in 30 seconds.",
            "RATE_LIMIT_EXCEEDED",
            id="429",
        ),
        pytest.param("+918867999907", 500, "Service Unavailable; ", 35008, id="exotel-down"),
        pytest.param(
            "+918867999915",
            401,
            "Authentication failed. Check your API key and token.",
            None,
            id="auth",
        ),
    ],
)
async def test_refused_connects_answer_exotels_error_and_place_no_call(
    exotel: httpx.AsyncClient, to: str, status: int, message: str, code: int | str | None
) -> None:
    response = await exotel.post(f"{CALLS}/connect.json", data=connect_form(to))

    assert response.status_code == status
    assert rest_exception(response) == (status, message, code)
    listing = await exotel.get(f"{CALLS}.json")
    assert listing.json()["Calls"] == []
    recorded = (await exotel.get("/_sim/requests")).json()
    assert [request["To"] for request in recorded] == [to]


async def test_rate_limited_connect_says_when_to_retry(exotel: httpx.AsyncClient) -> None:
    response = await exotel.post(f"{CALLS}/connect.json", data=connect_form("+918867999906"))

    assert response.status_code == 429
    assert response.headers["Retry-After"] == "30"


async def test_slow_answer_comes_late_but_complete(exotel: httpx.AsyncClient) -> None:
    started = time.monotonic()

    sid = await connect(exotel, to="+918867999908")

    assert time.monotonic() - started >= 0.2
    assert (await details(exotel, sid))["Status"] == "in-progress"


async def test_lost_answer_drops_the_connection_but_the_call_happens(
    exotel: httpx.AsyncClient, receiver: CallbackReceiver
) -> None:
    to = "+918867999909"

    with pytest.raises(httpx.RemoteProtocolError):
        await exotel.post(f"{CALLS}/connect.json", data=connect_form(to))

    [callback] = await receiver.wait_for(1)
    listing = ExotelCallList.model_validate_json(
        (await exotel.get(f"{CALLS}.json", params={"To": to})).content
    )
    [call] = listing.calls
    assert (await callback_fields(callback))["CallSid"] == call.sid


async def test_duplicated_callback_is_delivered_three_times(
    exotel: httpx.AsyncClient, receiver: CallbackReceiver
) -> None:
    await connect(exotel, to="+918867999910")
    await receiver.wait_for(3)
    await asyncio.sleep(0.02)

    deliveries = [await callback_fields(request) for request in receiver.requests]

    assert len(deliveries) == 3
    assert all(fields == deliveries[0] for fields in deliveries)
    assert deliveries[0]["EventType"] == "terminal"


async def test_callback_arrives_before_the_connect_answer(
    exotel: httpx.AsyncClient, receiver: CallbackReceiver
) -> None:
    answered = False
    seen_before_answer: list[bool] = []
    receiver.on_request = lambda: seen_before_answer.append(not answered)

    sid = await connect(exotel, to="+918867999911")
    answered = True

    assert seen_before_answer == [True]
    callback = await callback_fields(receiver.requests[0])
    assert (callback["CallSid"], callback["Status"]) == (sid, "completed")


async def test_stale_answered_callback_follows_the_terminal_one(
    exotel: httpx.AsyncClient, receiver: CallbackReceiver
) -> None:
    await connect(exotel, to="+918867999912")

    terminal, stale = [await callback_fields(r) for r in await receiver.wait_for(2)]

    assert (terminal["EventType"], terminal["Status"]) == ("terminal", "completed")
    assert (stale["EventType"], stale["Status"]) == ("answered", "in-progress")
    assert stale["DateUpdated"] < terminal["DateUpdated"]


async def test_no_callback_scenario_never_calls_back(
    exotel: httpx.AsyncClient, receiver: CallbackReceiver
) -> None:
    sid = await connect(exotel, to="+918867999913")

    final = await wait_until_ended(exotel, sid)
    await asyncio.sleep(0.02)

    assert final["Status"] == "completed"
    assert receiver.requests == []


# Bulk call details.


async def test_bulk_details_filter_by_number_and_page_with_next_page_uri(
    exotel: httpx.AsyncClient,
) -> None:
    wanted = "+918867990001"
    placed = [await connect(exotel, to=wanted) for _ in range(3)]
    other = await connect(exotel, to="+918867990002")
    for sid in [*placed, other]:
        await wait_until_ended(exotel, sid)

    first = await exotel.get(f"{CALLS}.json", params={"To": wanted, "PageSize": "2"})
    first_page = ExotelCallList.model_validate_json(first.content)
    assert first_page.metadata is not None
    next_uri = first_page.metadata.next_page_uri
    assert next_uri is not None
    assert next_uri.startswith(f"{CALLS}.json?")
    second = ExotelCallList.model_validate_json((await exotel.get(next_uri)).content)

    assert first.json()["Metadata"]["Total"] == 3
    assert [call.sid for call in first_page.calls + second.calls] == placed[::-1]
    assert second.metadata is not None
    assert second.metadata.next_page_uri is None


async def test_bulk_details_filter_by_sid_and_creation_window(exotel: httpx.AsyncClient) -> None:
    sids = [await connect(exotel) for _ in range(3)]
    for sid in sids:
        await wait_until_ended(exotel, sid)
    now = datetime.now(EXOTEL_TIMEZONE)

    def window(start: datetime, end: datetime | None = None) -> str:
        bounds = f"gte:{start:%Y-%m-%d %H:%M:%S}"
        return bounds + (f";lte:{end:%Y-%m-%d %H:%M:%S}" if end else "")

    async def listed(**params: str) -> list[str]:
        response = await exotel.get(f"{CALLS}.json", params=params)
        assert response.status_code == 200, response.text
        return [call.sid for call in ExotelCallList.model_validate_json(response.content).calls]

    assert await listed(Sid=f"{sids[0]},{sids[2]}") == [sids[2], sids[0]]
    around_now = window(now - timedelta(minutes=1), now + timedelta(minutes=1))
    assert sorted(await listed(DateCreated=around_now)) == sorted(sids)
    assert await listed(DateCreated=window(now + timedelta(minutes=1))) == []
    assert await listed(DateCreated=f"lte:{now - timedelta(minutes=1):%Y-%m-%d %H:%M:%S}") == []


async def test_bulk_details_reject_a_malformed_window(exotel: httpx.AsyncClient) -> None:
    response = await exotel.get(f"{CALLS}.json", params={"DateCreated": "gte:yesterday"})

    assert response.status_code == 400
    assert rest_exception(response)[0] == 400


# Test support routes and mounting.


async def test_recorded_requests_can_be_read_and_cleared(
    simulator: Simulator, exotel: httpx.AsyncClient
) -> None:
    await connect(exotel, CustomField="o-1")

    recorded = (await exotel.get("/_sim/requests")).json()
    cleared = await exotel.delete("/_sim/requests")

    assert recorded == [connect_form(CustomField="o-1")]
    assert cleared.status_code == 204
    assert (await exotel.get("/_sim/requests")).json() == []
    assert simulator.connect_requests == []


async def test_works_mounted_under_a_prefix(simulator: Simulator) -> None:
    host = Starlette(routes=[Mount("/simulator", app=simulator.app)])
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=host),
        base_url="http://host/simulator",
        auth=CREDENTIALS,
    ) as client:
        sid = await connect(client)
        call = await details(client, sid)

    assert call["Sid"] == sid
