"""The references Callbridge is measured against: bare Starlette routes on psycopg.

`app` (callback ingestion): no validation, no authentication, no ORM; it reads the
body, inserts it with psycopg (autocommit, so one INSERT is one transaction) and
answers 200.

`read_app` (reads, on the 1M-call database): GET /calls/{ref} and filtered GET /calls
pages doing the same reads as Callbridge, each in one statement whose JSON Postgres
builds (json_build_object, the legs aggregated), with no authentication and no
validation beyond what the SQL needs; Python only joins a page's items.

`place_app` (placing): POST /calls storing the request, asking Exotel with Callbridge's
own HTTP client and storing the answer, in two statements, with nothing else.

They bound what any Python service on the same uvicorn and Postgres can do. Each uses
as many connections as Callbridge's hot-path pool may (10).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import psycopg
from psycopg.types.json import Jsonb
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app.exotel.client import ConnectRequest, build_http_client

MAX_CONNECTIONS = 10
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

    def __init__(self, url: str, **options: Any) -> None:
        self._url = url
        self._options = options
        self._idle: asyncio.LifoQueue[psycopg.AsyncConnection[object]] = asyncio.LifoQueue()
        self._opened = 0

    async def acquire(self) -> psycopg.AsyncConnection[object]:
        if self._idle.empty() and self._opened < MAX_CONNECTIONS:
            self._opened += 1
            try:
                return await psycopg.AsyncConnection.connect(
                    self._url, autocommit=True, **self._options
                )
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


async def _pool_with(schema: str) -> Pool:
    """The pool on REFERENCE_DATABASE_URL, once `schema` is in place."""
    url = os.environ["REFERENCE_DATABASE_URL"]
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(schema)
    return Pool(url)


async def _write(request: Request, statement: str, params: tuple[Any, ...]) -> None:
    pool: Pool = request.app.state.pool
    conn = await pool.acquire()
    try:
        await conn.execute(statement, params)
    finally:
        pool.release(conn)


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    app.state.pool = await _pool_with(SCHEMA)
    yield
    await app.state.pool.close()


async def receive_callback(request: Request) -> Response:
    body = await request.body()
    token, content_type = request.query_params.get("token"), request.headers.get("content-type")
    await _write(request, INSERT, (token, content_type, body))
    return JSONResponse({"status": "accepted"})


app = Starlette(
    routes=[Route("/callbacks/exotel", receive_callback, methods=["POST"])], lifespan=lifespan
)


# -- reads -----------------------------------------------------------------------------

# The call resource as Callbridge renders it (the contract's fields, same order), built
# by Postgres from one row of calls joined to its notification, the legs aggregated.
CALL_JSON = """
json_build_object(
    'id', c.id, 'sid', c.sid, 'status', c.status, 'from', c.from_number,
    'to', c.to_number, 'caller_id', c.caller_id, 'direction', c.direction,
    'custom_field', c.custom_field, 'created_at', c.created_at, 'updated_at', c.updated_at,
    'start_time', c.start_time, 'end_time', c.end_time, 'duration', c.duration,
    'conversation_duration', c.conversation_duration, 'price', c.price::float8,
    'recording_url', c.recording_url, 'answered_by', c.answered_by,
    'legs', coalesce((
        SELECT json_agg(json_build_object('leg', l.leg, 'number', l.number,
                                          'status', l.status,
                                          'on_call_duration', l.on_call_duration)
                        ORDER BY l.leg)
        FROM call_legs l WHERE l.call_id = c.id), '[]'::json),
    'error', CASE WHEN c.error_message IS NOT NULL OR c.error_status IS NOT NULL THEN
        json_build_object('status', c.error_status, 'code', c.error_code,
                          'message', c.error_message) END,
    'notify', CASE WHEN n.call_id IS NOT NULL THEN
        json_build_object('status', n.status, 'attempts', n.attempts,
                          'last_error', n.last_error) END
)::text
"""
CALL_FROM = "FROM calls c LEFT JOIN notifications n ON n.call_id = c.id"
READ_BY_SID = f"SELECT {CALL_JSON} {CALL_FROM} WHERE c.sid = %(ref)s LIMIT 1"
READ_BY_SID_OR_ID = f"SELECT {CALL_JSON} {CALL_FROM} WHERE c.sid = %(ref)s OR c.id = %(id)s LIMIT 1"
# Query parameter -> condition, as Callbridge filters (it normalises numbers first; the
# bench sends them normalised already).
PAGE_FILTERS = {
    "status": "c.status = %(status)s",
    "from": "c.from_number = %(from)s",
    "to": "c.to_number = %(to)s",
    "custom_field": "c.custom_field = %(custom_field)s",
    "created_after": "c.created_at >= %(created_after)s::timestamptz",
    "created_before": "c.created_at < %(created_before)s::timestamptz",
}
NOT_FOUND = b'{"type":"about:blank","title":"Not Found","status":404}'


def _cursor(created_at: str, call_id: str) -> str:
    """Callbridge's cursor format: base64url of [created_at, id], unpadded."""
    raw = json.dumps([created_at, call_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _from_cursor(cursor: str) -> tuple[str, str]:
    created_at, call_id = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    return str(created_at), str(call_id)


@asynccontextmanager
async def read_lifespan(app: Starlette) -> AsyncIterator[None]:
    app.state.pool = Pool(os.environ["REFERENCE_DATABASE_URL"], options="-c TimeZone=UTC")
    yield
    await app.state.pool.close()


async def _fetch(request: Request, query: str, params: dict[str, Any]) -> list[Any]:
    pool: Pool = request.app.state.pool
    conn = await pool.acquire()
    try:
        cursor = await conn.execute(query, params)
        return await cursor.fetchall()
    finally:
        pool.release(conn)


async def read_call(request: Request) -> Response:
    ref = request.path_params["ref"]
    try:
        params: dict[str, Any] = {"ref": ref, "id": uuid.UUID(ref)}
        query = READ_BY_SID_OR_ID
    except ValueError:
        params, query = {"ref": ref}, READ_BY_SID
    rows = await _fetch(request, query, params)
    if not rows:
        return Response(NOT_FOUND, 404, media_type="application/problem+json")
    return Response(rows[0][0], media_type="application/json")


async def list_calls(request: Request) -> Response:
    given = request.query_params
    limit = int(given.get("limit", "50"))
    conditions = []
    params: dict[str, Any] = {"limit": limit + 1}
    for name, condition in PAGE_FILTERS.items():
        if name in given:
            conditions.append(condition)
            params[name] = given[name]
    if "cursor" in given:
        params["cursor_created_at"], params["cursor_id"] = _from_cursor(given["cursor"])
        conditions.append(
            "(c.created_at, c.id) < (%(cursor_created_at)s::timestamptz, %(cursor_id)s::uuid)"
        )
    where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
    query = (
        f"SELECT {CALL_JSON}, to_json(c.created_at) #>> '{{}}', c.id::text "
        f"{CALL_FROM} {where} ORDER BY c.created_at DESC, c.id DESC LIMIT %(limit)s"
    )
    rows = await _fetch(request, query, params)
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_cursor = json.dumps(_cursor(rows[-1][1], rows[-1][2]))
    items = ",".join(row[0] for row in rows)
    body = f'{{"items":[{items}],"next_cursor":{next_cursor or "null"}}}'
    return Response(body, media_type="application/json")


read_app = Starlette(
    routes=[Route("/calls", list_calls), Route("/calls/{ref}", read_call)],
    lifespan=read_lifespan,
)


# -- placing ---------------------------------------------------------------------------

# The least any service placing calls through Exotel does: store the request (committed
# before Exotel is asked), ask Exotel with Callbridge's own HTTP client (build_http_client:
# the same httpx API over the same wire), store the answer, answer 201. No
# authentication, validation, limits, idempotency, metrics or logs.
PLACE_SCHEMA = """
CREATE TABLE IF NOT EXISTS placed_calls (
    id uuid PRIMARY KEY,
    from_number text NOT NULL,
    to_number text NOT NULL,
    status text NOT NULL,
    sid text,
    answer jsonb
)
"""
INSERT_PLACED = (
    "INSERT INTO placed_calls (id, from_number, to_number, status) VALUES (%s, %s, %s, 'pending')"
)
UPDATE_PLACED = "UPDATE placed_calls SET sid = %s, status = %s, answer = %s WHERE id = %s"


@asynccontextmanager
async def place_lifespan(app: Starlette) -> AsyncIterator[None]:
    app.state.pool = await _pool_with(PLACE_SCHEMA)
    app.state.connect_path = f"/v1/Accounts/{os.environ['EXOTEL_ACCOUNT_SID']}/Calls/connect.json"
    app.state.caller_id = os.environ["EXOTEL_CALLER_ID"]
    app.state.status_callback = f"{os.environ['PUBLIC_BASE_URL']}/callbacks/exotel?token="
    async with build_http_client(
        os.environ["EXOTEL_BASE_URL"],
        api_key=os.environ["EXOTEL_API_KEY"],
        api_token=os.environ["EXOTEL_API_TOKEN"],
        timeout_s=30,
    ) as exotel:
        app.state.exotel = exotel
        yield
    await app.state.pool.close()


async def place_call(request: Request) -> Response:
    given = json.loads(await request.body())
    call_id = uuid.uuid4()
    await _write(request, INSERT_PLACED, (call_id, given["from"], given["to"]))
    state = request.app.state
    form = ConnectRequest(
        from_number=given["from"],
        to_number=given["to"],
        caller_id=state.caller_id,
        status_callback=f"{state.status_callback}{call_id}",
    ).form()
    exotel: httpx.AsyncClient = state.exotel
    answer = (await exotel.post(state.connect_path, data=form)).raise_for_status().json()["Call"]
    await _write(request, UPDATE_PLACED, (answer["Sid"], answer["Status"], Jsonb(answer), call_id))
    return JSONResponse(
        {"id": str(call_id), "sid": answer["Sid"], "status": answer["Status"]}, status_code=201
    )


place_app = Starlette(
    routes=[Route("/calls", place_call, methods=["POST"])], lifespan=place_lifespan
)
