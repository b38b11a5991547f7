"""Graceful shutdown: on SIGTERM, a call being placed is finished, answered and stored."""

from __future__ import annotations

import asyncio
import socket

import httpx
import pytest
import respx
import uvicorn
from fastapi import FastAPI

from app.cli import SERVER_OPTIONS
from tests.conftest import READER_KEY, WRITER_KEY
from tests.exotel_samples import connect_answer

SID = "0d3c5e7f9a1b2c4d6e8f0a1b2c3d4e5f"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_shutdown_lets_a_request_in_flight_finish(
    app: FastAPI, exotel: respx.MockRouter
) -> None:
    exotel_asked = asyncio.Event()

    async def slow_exotel(_: httpx.Request) -> httpx.Response:
        exotel_asked.set()
        await asyncio.sleep(0.5)
        return httpx.Response(200, json=connect_answer(SID))

    exotel.post("/connect.json").mock(side_effect=slow_exotel)
    port = free_port()
    # The app is already started; uvicorn must not run its lifespan a second time.
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", **SERVER_OPTIONS)
    )
    serving = asyncio.create_task(server.serve())
    while not server.started:
        if serving.done():
            serving.result()
        await asyncio.sleep(0.01)
    base = f"http://127.0.0.1:{port}"

    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
        placing = asyncio.create_task(
            http.post(
                "/calls",
                json={"from": "+919876543210", "to": "09123456789"},
                headers={"Authorization": f"Bearer {WRITER_KEY}"},
            )
        )
        await exotel_asked.wait()
        server.should_exit = True  # what uvicorn's SIGTERM handler does
        response = await placing
    await serving

    assert response.status_code == 201
    assert response.json()["sid"] == SID
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://callbridge.test",
        headers={"Authorization": f"Bearer {READER_KEY}"},
    ) as http:
        stored = (await http.get(f"/calls/{SID}")).json()
    assert stored["status"] == "in-progress"
    async with httpx.AsyncClient(base_url=base) as http:
        with pytest.raises(httpx.ConnectError):
            await http.get("/healthz")
