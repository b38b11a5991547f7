"""Every simulator scenario, end to end, ends in the right stored state."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from app.exotel.simulator import SimulatorConfig
from tests.e2e.conftest import Stack

FROM = "+919876543210"
FINAL = {"completed", "failed", "busy", "no-answer", "canceled"}


def to_number(suffix: str) -> str:
    return f"+91912345{suffix}"


async def settled(stack: Stack, ref: str, *, timeout_s: float = 15.0) -> dict[str, Any]:
    """The call once it has a final status (and a sid), polling like a dashboard would."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        call: dict[str, Any] = (await stack.callbridge.get(f"/calls/{ref}")).json()
        if call["status"] in FINAL and call["sid"]:
            return call
        assert asyncio.get_running_loop().time() < deadline, f"not settled: {call}"
        await asyncio.sleep(0.1)


async def place(stack: Stack, suffix: str, **options: Any) -> tuple[int, dict[str, Any]]:
    response = await stack.callbridge.post(
        "/calls", json={"from": FROM, "to": to_number(suffix), **options}
    )
    body: dict[str, Any] = response.json()
    return response.status_code, body


async def connect_requests(stack: Stack) -> list[dict[str, str]]:
    requests: list[dict[str, str]] = (await stack.simulator.get("/_sim/requests")).json()
    return requests


async def events(stack: Stack, ref: str) -> list[dict[str, Any]]:
    response = await stack.callbridge.get(f"/calls/{ref}/events")
    found: list[dict[str, Any]] = response.json()["items"]
    return found


async def test_a_normal_call_completes_with_legs_and_recording(stack: Stack) -> None:
    status, body = await place(stack, "0000", record=True, custom_field="order-1")
    assert status == 201

    call = await settled(stack, body["sid"])

    assert call["status"] == "completed"
    assert call["conversation_duration"] > 0
    assert call["recording_url"].endswith(".wav")
    assert [leg["status"] for leg in call["legs"]] == ["completed", "completed"]
    assert all(leg["on_call_duration"] > 0 for leg in call["legs"])
    assert call["custom_field"] == "order-1"
    assert call["end_time"] is not None
    # Callbridge subscribes to `answered` as well as `terminal`.
    assert [event["event_type"] for event in await events(stack, call["id"])] == [
        "answered",
        "terminal",
    ]


@pytest.mark.parametrize(
    ("suffix", "status", "leg_statuses"),
    [
        ("9901", "busy", ["completed", "busy"]),
        ("9902", "no-answer", ["completed", "no-answer"]),
        ("9903", "failed", ["completed", "failed"]),
        ("9904", "no-answer", ["no-answer", None]),
    ],
)
async def test_unanswered_calls(
    stack: Stack, suffix: str, status: str, leg_statuses: list[str | None]
) -> None:
    code, body = await place(stack, suffix, time_out=20)
    assert code == 201
    call = await settled(stack, body["sid"])
    assert call["status"] == status
    assert [leg["status"] for leg in call["legs"]] == leg_statuses
    assert call["conversation_duration"] in (0, None)


@pytest.mark.parametrize(
    ("suffix", "http_status", "message"),
    [
        ("9905", 422, "TRAI NDNC"),
        ("9906", 503, None),
        ("9907", 502, None),
        ("9914", 422, "KYC"),
        ("9915", 502, None),
    ],
)
async def test_refusals_are_answered_and_stored(
    stack: Stack, suffix: str, http_status: int, message: str | None
) -> None:
    code, problem = await place(stack, suffix)
    assert code == http_status
    call = (await stack.callbridge.get(f"/calls/{problem['id']}")).json()
    assert call["status"] == "failed"
    assert call["sid"] is None
    assert call["error"]["status"] is not None
    if message:
        assert message in problem["detail"]
        assert message in call["error"]["message"]


async def test_a_slow_answer_is_still_a_placed_call(stack: Stack) -> None:
    code, body = await place(stack, "9908")
    assert code == 201
    assert (await settled(stack, body["sid"]))["status"] == "completed"


# Slow enough that the call outlasts Callbridge's 1.5 s wait for Exotel's answer.
LONG_CALLS = SimulatorConfig(speed=10.0, lost_answer_hang_s=3.0)


@pytest.mark.parametrize("simulator_config", [LONG_CALLS], indirect=True)
async def test_a_lost_answer_settles_with_one_connect_request(stack: Stack) -> None:
    code, problem = await place(stack, "9909")
    assert code == 504
    assert (await stack.callbridge.get(f"/calls/{problem['id']}")).json()["status"] == "unknown"

    call = await settled(stack, problem["id"])

    assert call["status"] == "completed"
    assert len(await connect_requests(stack)) == 1


async def test_a_lost_answer_is_a_504_even_on_a_fast_simulator(stack: Stack) -> None:
    # The call outlasts the dropped answer: no callback can settle it in time.
    code, problem = await place(stack, "9909")
    assert code == 504
    assert problem["id"]
    assert len(await connect_requests(stack)) == 1


async def test_duplicated_callbacks_change_nothing(stack: Stack) -> None:
    _, body = await place(stack, "9910")
    call = await settled(stack, body["sid"])
    await asyncio.sleep(0.3)  # let the copies arrive
    received = [event["event_type"] for event in await events(stack, body["sid"])]
    assert received == ["answered", "terminal", "terminal", "terminal"]
    assert (await stack.callbridge.get(f"/calls/{body['sid']}")).json() == call


async def test_a_callback_before_the_connect_answer_is_not_overwritten(stack: Stack) -> None:
    code, body = await place(stack, "9911")
    assert code == 201
    assert body["status"] == "completed"
    assert (await settled(stack, body["sid"]))["status"] == "completed"


async def test_a_stale_answered_after_completed_is_ignored(stack: Stack) -> None:
    _, body = await place(stack, "9912")
    await settled(stack, body["sid"])
    for _ in range(50):
        if len(await events(stack, body["sid"])) == 2:
            break
        await asyncio.sleep(0.1)
    received = await events(stack, body["sid"])
    assert [event["event_type"] for event in received] == ["terminal", "answered"]
    assert (await stack.callbridge.get(f"/calls/{body['sid']}")).json()["status"] == "completed"


async def test_a_call_without_callback_is_reconciled(stack: Stack) -> None:
    _, body = await place(stack, "9913")
    call = await settled(stack, body["sid"], timeout_s=20)
    assert call["status"] == "completed"
    assert [event["source"] for event in await events(stack, body["sid"])][-1] == "reconcile"
