"""Fixtures for the operations tests: JSON logs captured as the service writes them, and
a TCP proxy in front of Postgres that a test can cut to play a database outage."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from sqlalchemy import make_url

from app.config import Settings
from tests.conftest import make_settings


@pytest.fixture
def settings(database_url: str) -> Settings:
    return make_settings(database_url, log_format="json")


class CapturedLogs:
    def __init__(self) -> None:
        self.stream = io.StringIO()

    @property
    def text(self) -> str:
        return self.stream.getvalue()

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.text.splitlines()]

    def requests(self) -> list[dict[str, Any]]:
        return [line for line in self.lines() if line["event"] == "request"]


@pytest.fixture
def logs(app: FastAPI) -> Iterator[CapturedLogs]:
    """What the app's log handler writes, from here on: the exact lines production gets."""
    root = logging.getLogger()
    [configured] = root.handlers
    captured = CapturedLogs()
    handler = logging.StreamHandler(captured.stream)
    handler.setFormatter(configured.formatter)
    root.addHandler(handler)
    yield captured
    root.removeHandler(handler)


class PostgresProxy:
    """Forwards 127.0.0.1:<port> to Postgres; `stop()` is an outage, `start()` the recovery,
    `freeze()` a database that keeps every connection open and never answers again."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self._upstream = (upstream_host, upstream_port)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._thawed = asyncio.Event()
        self._thawed.set()
        self.port = 0

    def freeze(self) -> None:
        """From now on nothing is forwarded either way; new connections are accepted and held."""
        self._thawed.clear()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Refuse new connections and cut the open ones, as a Postgres restart does."""
        if self._server is not None:
            self._server.close()
            self._server = None
        self._thawed.set()
        for writer in list(self._writers):
            writer.close()
        self._writers.clear()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        if not self._thawed.is_set():
            self._writers.add(client_w)
            return
        try:
            upstream_r, upstream_w = await asyncio.open_connection(*self._upstream)
        except OSError:
            client_w.close()
            return
        self._writers |= {client_w, upstream_w}
        await asyncio.gather(self._pipe(client_r, upstream_w), self._pipe(upstream_r, client_w))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                await self._thawed.wait()
                writer.write(data)
                await writer.drain()
        writer.close()
        self._writers.discard(writer)

    def url(self, database_url: str) -> str:
        return (
            make_url(database_url)
            .set(host="127.0.0.1", port=self.port)
            .render_as_string(hide_password=False)
        )


@pytest.fixture
async def postgres_proxy(database_url: str) -> AsyncIterator[PostgresProxy]:
    url = make_url(database_url)
    proxy = PostgresProxy(url.host or "127.0.0.1", url.port or 5432)
    await proxy.start()
    yield proxy
    await proxy.stop()
