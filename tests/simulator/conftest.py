"""Fixtures of the simulator tests: a simulator in-process, its callbacks caught by a
MockTransport, and helpers that speak to it like Callbridge does."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from starlette.requests import Request
from starlette.types import Message

from app.exotel.schemas import ExotelCallEnvelope, ExotelErrorEnvelope
from app.exotel.simulator import Simulator, SimulatorConfig

ACCOUNT = "callbridge-sim"
CREDENTIALS = ("sim-key", "sim-token")
CALLS = f"/v1/Accounts/{ACCOUNT}/Calls"
CALLBACK_URL = "http://callbridge.test/callbacks/exotel?token=secret-token"
FROM = "+919812340000"
NATIONAL_FROM = "09812340000"
NORMAL_TO = "+918867990000"
NATIONAL_NORMAL_TO = "08867990000"
EXOTEL_TIME = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$")
# Fast, and figures (Duration, Price, EndTime) in 5 ms after the end.
FAST = SimulatorConfig(speed=1000.0, slow_answer_s=0.2, lost_answer_hang_s=0.2, figures_delay_s=5)


class CallbackReceiver:
    """Callbridge's callback endpoint, stood in by an httpx MockTransport."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.refusals = 0  # connections to refuse before answering
        self.answers: list[int] = []  # status codes to answer, in order; then 200
        self.on_request: Callable[[], None] = lambda: None
        self._arrived = asyncio.Event()

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        self._arrived.set()
        self.on_request()
        if self.refusals:
            self.refusals -= 1
            raise httpx.ConnectError("connection refused", request=request)
        status = self.answers.pop(0) if self.answers else 200
        return httpx.Response(status)

    async def wait_for(self, count: int, timeout_s: float = 2.0) -> list[httpx.Request]:
        async with asyncio.timeout(timeout_s):
            while len(self.requests) < count:
                self._arrived.clear()
                await self._arrived.wait()
        return self.requests


@pytest.fixture
def receiver() -> CallbackReceiver:
    return CallbackReceiver()


@pytest.fixture
def simulator_config(request: pytest.FixtureRequest) -> SimulatorConfig:
    """FAST, unless a test asks for another with indirect parametrization."""
    config: SimulatorConfig = getattr(request, "param", FAST)
    return config


@pytest.fixture
async def simulator(
    receiver: CallbackReceiver, simulator_config: SimulatorConfig
) -> AsyncIterator[Simulator]:
    sim = Simulator(simulator_config, callback_transport=httpx.MockTransport(receiver.handle))
    yield sim
    await sim.aclose()


@pytest.fixture
async def exotel(simulator: Simulator) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=simulator.app), base_url="http://sim", auth=CREDENTIALS
    ) as client:
        yield client


def connect_form(to: str = NORMAL_TO, **extra: str) -> dict[str, str]:
    return {
        "From": FROM,
        "To": to,
        "CallerId": "08047112233",
        "StatusCallback": CALLBACK_URL,
        "StatusCallbackEvents[0]": "terminal",
        **extra,
    }


async def connect(client: httpx.AsyncClient, to: str = NORMAL_TO, **extra: str) -> str:
    """Places a call and returns its Sid."""
    response = await client.post(f"{CALLS}/connect.json", data=connect_form(to, **extra))
    assert response.status_code == 200, response.text
    return ExotelCallEnvelope.model_validate_json(response.content).call.sid


async def callback_fields(request: httpx.Request) -> dict[str, Any]:
    """A callback's fields, parsed the way a Starlette endpoint parses them."""
    if request.headers["content-type"] == "application/json":
        fields: dict[str, Any] = json.loads(request.content)
        return fields
    assert request.headers["content-type"].startswith("multipart/form-data; boundary=")
    body = request.content

    async def receive() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/",
        "query_string": b"",
        "headers": [(name.lower(), value) for name, value in request.headers.raw],
    }
    form = await Request(scope, receive).form()
    return {name: value for name, value in form.items() if isinstance(value, str)}


async def details(client: httpx.AsyncClient, sid: str) -> dict[str, Any]:
    response = await client.get(f"{CALLS}/{sid}.json", params={"details": "true"})
    assert response.status_code == 200, response.text
    ExotelCallEnvelope.model_validate_json(response.content)
    call: dict[str, Any] = response.json()["Call"]
    return call


async def wait_until_ended(client: httpx.AsyncClient, sid: str) -> dict[str, Any]:
    """The call once call details show its figures (Duration, Price, EndTime)."""
    for _ in range(400):
        call = await details(client, sid)
        if call["EndTime"] is not None:
            return call
        await asyncio.sleep(0.005)
    raise AssertionError(f"call {sid} did not end")


def rest_exception(response: httpx.Response) -> tuple[int | None, str | None, int | str | None]:
    error = ExotelErrorEnvelope.model_validate_json(response.content).rest_exception
    return error.status, error.message, error.code
