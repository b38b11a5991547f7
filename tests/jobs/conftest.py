"""Fixtures for the jobs: the app with its jobs running, Exotel, and a notify_url receiver."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp

from app.config import Settings
from app.exotel.simulator import Simulator, SimulatorConfig
from app.main import create_app
from tests.conftest import WRITER_KEY, make_settings

NOTIFY_SECRET = "whsec_cmVsYXktdGVzdHMtc2lnbmluZy1rZXktMzItYnl0ZXM="
# Intervals small enough that the jobs act within a test's patience.
FAST_JOBS: dict[str, object] = {
    "run_jobs": True,
    "reconcile_interval_s": 0.05,
    "notify_poll_interval_s": 0.05,
    "notify_first_retry_s": 0.1,
    "notify_secret": NOTIFY_SECRET,
    # Receivers listen on loopback, which notify URLs may not reach unless allowed.
    "notify_allowed_hosts": "127.0.0.1",
}


@asynccontextmanager
async def serving(app: ASGIApp) -> AsyncIterator[str]:
    """Serve `app` on a free port of 127.0.0.1 while the block runs; yields its base URL."""
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, access_log=False)
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = 10.0) -> None:
    """Wait until `check()` holds; fail the test if it still does not after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"not true after {timeout_s} s")
        await asyncio.sleep(0.02)


@dataclass(frozen=True)
class Delivery:
    headers: dict[str, str]
    body: bytes
    received_at: float  # time.monotonic()


@dataclass
class Receiver:
    """A notify_url on a real socket: records every POST and answers as scripted."""

    url: str = ""
    answers: list[int] = field(default_factory=list)  # status codes in order; then 204
    delay_s: float = 0.0
    deliveries: list[Delivery] = field(default_factory=list)

    async def endpoint(self, request: Request) -> Response:
        self.deliveries.append(
            Delivery(dict(request.headers), await request.body(), time.monotonic())
        )
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        return Response(status_code=self.answers.pop(0) if self.answers else 204)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    receiver = Receiver()
    app = Starlette(routes=[Route("/hooks", receiver.endpoint, methods=["POST"])])
    async with serving(app) as url:
        receiver.url = f"{url}/hooks?token=receiver-secret"
        yield receiver


@dataclass(frozen=True)
class RunningApp:
    app: FastAPI
    client: httpx.AsyncClient


AppFactory = Callable[..., Awaitable[RunningApp]]


@pytest.fixture
async def start_app(database_url: str) -> AsyncIterator[AppFactory]:
    """Start the app (jobs running, fast) with settings overridden as asked."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(**overrides: object) -> RunningApp:
            settings: Settings = make_settings(database_url, **{**FAST_JOBS, **overrides})
            app = create_app(settings)
            await stack.enter_async_context(app.router.lifespan_context(app))
            client = await stack.enter_async_context(
                httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=app),
                    base_url="http://callbridge.test",
                    headers={"Authorization": f"Bearer {WRITER_KEY}"},
                )
            )
            return RunningApp(app, client)

        yield start


@dataclass(frozen=True)
class LiveSimulator:
    simulator: Simulator
    url: str

    def settings(self) -> dict[str, object]:
        config = self.simulator.config
        return {
            "exotel_base_url": self.url,
            "exotel_account_sid": config.account_sid,
            "exotel_api_key": config.api_key,
            "exotel_api_token": config.api_token,
        }


@pytest.fixture
async def simulator() -> AsyncIterator[LiveSimulator]:
    """The Exotel simulator on a real socket; its status callbacks never get through."""
    simulator = Simulator(
        SimulatorConfig(speed=1000.0, lost_answer_hang_s=0.2),
        callback_transport=httpx.MockTransport(lambda _: httpx.Response(503)),
    )
    async with serving(simulator.app) as url:
        yield LiveSimulator(simulator, url)
