"""End-to-end: Callbridge and the Exotel simulator on real sockets, callbacks over HTTP."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
import pytest
import uvicorn
from starlette.types import ASGIApp

from app.exotel.simulator import Simulator, SimulatorConfig
from app.main import create_app
from tests.conftest import WRITER_KEY, make_settings

SIMULATOR = SimulatorConfig(speed=100.0, lost_answer_hang_s=3.0, slow_answer_s=0.5)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@asynccontextmanager
async def serving(app: ASGIApp, port: int) -> AsyncIterator[None]:
    """Serve `app` with uvicorn on 127.0.0.1:port for the duration of the block."""
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False)
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        yield
    finally:
        server.should_exit = True
        await task


@dataclass(frozen=True)
class Stack:
    callbridge: httpx.AsyncClient
    simulator: httpx.AsyncClient


@pytest.fixture
def simulator_config(request: pytest.FixtureRequest) -> SimulatorConfig:
    """SIMULATOR, unless a test asks for another with indirect parametrization."""
    return getattr(request, "param", SIMULATOR)


@pytest.fixture
def callbridge_settings(request: pytest.FixtureRequest) -> dict[str, object]:
    """Settings Callbridge runs with beyond the stack's own, for indirect parametrization."""
    overrides: dict[str, object] = getattr(request, "param", {})
    return overrides


@pytest.fixture
async def stack(
    database_url: str, simulator_config: SimulatorConfig, callbridge_settings: dict[str, object]
) -> AsyncIterator[Stack]:
    simulator = Simulator(simulator_config)
    simulator_port, callbridge_port = free_port(), free_port()
    settings = make_settings(
        database_url,
        **{
            "exotel_base_url": f"http://127.0.0.1:{simulator_port}",
            "exotel_account_sid": simulator_config.account_sid,
            "exotel_api_key": simulator_config.api_key,
            "exotel_api_token": simulator_config.api_token,
            "exotel_timeout_s": 1.5,
            "public_base_url": f"http://127.0.0.1:{callbridge_port}",
            "run_jobs": True,
            "reconcile_after_s": 2,
            "reconcile_interval_s": 0.5,
            # Exotel's figures come `figures_delay_s` simulated seconds after the end.
            "details_after_s": simulator_config.figures_delay_s / simulator_config.speed,
            **callbridge_settings,
        },
    )
    async with (
        serving(simulator.app, simulator_port),
        serving(create_app(settings), callbridge_port),
        httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{callbridge_port}",
            headers={"Authorization": f"Bearer {WRITER_KEY}"},
            timeout=10,
        ) as callbridge,
        httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{simulator_port}",
            auth=(simulator_config.api_key, simulator_config.api_token),
        ) as simulator_http,
    ):
        yield Stack(callbridge, simulator_http)
    await simulator.aclose()
