"""The reference for callback ingestion: a bare Starlette route that inserts one row.

No validation, no authentication, no ORM: it reads the body, inserts it with psycopg
(autocommit, so one INSERT is one transaction) and answers 200. It bounds what any
Python service on the same uvicorn and Postgres can do; Callbridge is measured
against it. It uses as many connections as Callbridge's pool may (10 + 10 overflow).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import psycopg
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

MAX_CONNECTIONS = 20
SCHEMA = """
CREATE TABLE IF NOT EXISTS callbacks (
    id bigserial PRIMARY KEY,
    token text,
    content_type text,
    raw_body bytea NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
)
"""
INSERT = "INSERT INTO callbacks (token, content_type, raw_body) VALUES (%s, %s, %s)"


class Pool:
    """Up to MAX_CONNECTIONS autocommit connections, opened on demand and kept."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._idle: asyncio.LifoQueue[psycopg.AsyncConnection[object]] = asyncio.LifoQueue()
        self._opened = 0

    async def acquire(self) -> psycopg.AsyncConnection[object]:
        if self._idle.empty() and self._opened < MAX_CONNECTIONS:
            self._opened += 1
            try:
                return await psycopg.AsyncConnection.connect(self._url, autocommit=True)
            except BaseException:
                self._opened -= 1
                raise
        return await self._idle.get()

    def release(self, conn: psycopg.AsyncConnection[object]) -> None:
        if conn.closed:
            self._opened -= 1
        else:
            self._idle.put_nowait(conn)

    async def close(self) -> None:
        while not self._idle.empty():
            await self._idle.get_nowait().close()


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    url = os.environ["REFERENCE_DATABASE_URL"]
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(SCHEMA)
    app.state.pool = Pool(url)
    yield
    await app.state.pool.close()


async def receive_callback(request: Request) -> Response:
    body = await request.body()
    pool: Pool = request.app.state.pool
    conn = await pool.acquire()
    try:
        await conn.execute(
            INSERT,
            (request.query_params.get("token"), request.headers.get("content-type"), body),
        )
    finally:
        pool.release(conn)
    return JSONResponse({"status": "accepted"})


app = Starlette(
    routes=[Route("/callbacks/exotel", receive_callback, methods=["POST"])], lifespan=lifespan
)
