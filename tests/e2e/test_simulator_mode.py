"""Callbridge in simulator mode keeps the simulator's calls in its own database: after a
restart the simulator still knows them (issue 14, item 3)."""

from __future__ import annotations

from pathlib import Path

import httpx
import psycopg

from app.config import Settings
from app.exotel.simulator import SimulatorConfig
from app.main import SIMULATOR_PREFIX, create_app
from tests.conftest import WRITER_KEY, make_settings
from tests.e2e.conftest import free_port, serving


def simulator_mode(database_url: str, port: int, data_dir: Path) -> Settings:
    return make_settings(
        database_url,
        exotel_account_sid=None,
        exotel_api_key=None,
        exotel_api_token=None,
        exotel_base_url=None,
        callbridge_simulator=True,
        public_base_url=f"http://127.0.0.1:{port}",
        callbridge_data_dir=data_dir,
    )


async def test_simulated_calls_outlive_a_restart(database_url: str, tmp_path: Path) -> None:
    port = free_port()
    settings = simulator_mode(database_url, port, tmp_path)
    base = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {WRITER_KEY}"}
    async with serving(create_app(settings), port), httpx.AsyncClient(base_url=base) as http:
        placed = await http.post(
            "/calls", json={"from": "+919876543210", "to": "+919123450000"}, headers=headers
        )
        assert placed.status_code == 201, placed.text
    sid = placed.json()["sid"]

    async with serving(create_app(settings), port), httpx.AsyncClient(base_url=base) as http:
        config = SimulatorConfig()
        token = settings.dev_secret("simulator_token")
        details = await http.get(
            f"{SIMULATOR_PREFIX}/v1/Accounts/{config.account_sid}/Calls/{sid}.json",
            auth=(config.api_key, token),
        )

    assert details.status_code == 200, details.text
    assert details.json()["Call"]["Sid"] == sid
    with psycopg.connect(database_url.replace("+psycopg", "")) as conn:
        conn.execute("DELETE FROM sim_calls WHERE sid = %s", (sid,))
