"""Simulator mode as a newcomer meets it: /docs without internet, open access for this machine
only, and the simulator's deliberate errors kept out of the service's metrics and logs."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from app.config import Settings
from app.main import create_app


@pytest.fixture
async def simulated(database_url: str, tmp_path: Path) -> AsyncIterator[FastAPI]:
    settings = Settings(
        _env_file=None,
        callbridge_simulator=True,
        database_url=database_url,
        callbridge_data_dir=tmp_path,
        run_jobs=False,
        log_format="json",
    )
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


def client_from(app: FastAPI, address: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, client=(address, 40000)),
        base_url="http://127.0.0.1:8000",
    )


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_the_docs_use_only_assets_the_service_serves(
    client: httpx.AsyncClient, page: str
) -> None:
    html = (await client.get(page)).text
    assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html)

    assert assets
    assert "://" not in html.replace("http://www.w3.org", ""), "an asset from elsewhere"
    for asset in assets:
        response = await client.get(asset)
        assert response.status_code == 200, asset
        assert len(response.content) > 1000, asset
    assert (await client.get("/openapi.json")).status_code == 200


async def test_open_access_serves_this_machine_only(simulated: FastAPI) -> None:
    async with client_from(simulated, "127.0.0.1") as local:
        assert (await local.get("/calls")).status_code == 200
    async with client_from(simulated, "10.1.2.3") as remote:
        refused = await remote.get("/calls")
    assert refused.status_code == 403
    assert refused.headers["content-type"] == "application/problem+json"


async def test_the_simulators_answers_are_not_the_services_metrics(
    simulated: FastAPI, caplog: pytest.LogCaptureFixture
) -> None:
    async with client_from(simulated, "127.0.0.1") as local:
        refused = await local.post("/simulator/v1/Accounts/nobody/Calls/connect.json")
        assert refused.status_code >= 400
        metrics = (await local.get("/metrics")).text

    assert "/simulator" not in metrics
    assert "/simulator" not in caplog.text
