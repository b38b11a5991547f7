"""Reading at scale: 1,000,000 calls and their 2,000,000 legs, then GET /calls/{sid} and
filtered GET /calls pages, against a read reference, and the query plans behind them.

The reference (bench.reference:read_app) does the same reads in one statement each,
its JSON built by Postgres. Both servers run side by side and get the very same
requests from the load generator (wrk or the asyncio client), at concurrency 1 and 16:
for each, the tables and indexes are read into the OS page cache (pg_prewarm, where the
server has it), both servers are warmed up, then Callbridge and the reference are
measured, so that neither pays for pages the other brought in. The figure is the ratio
of their throughputs, with CPU time per request of each server process. The pages'
requests (cursors of next pages included) are those of a first pass through Callbridge
with httpx, one request at a time, following next_cursor; that pass also gives the
latency of each kind of page.

The rows are made by Postgres itself (generate_series), not through the API, in a
database kept between runs (`--reseed` makes it anew; a new migration does too). The
plans are those of the statements Callbridge really sends: an in-process app is driven
through the same requests while SQLAlchemy's statements are captured, then each is run
under EXPLAIN (ANALYZE, BUFFERS).
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg

from app.config import Settings
from app.main import create_app
from bench.ingest import drive
from bench.load import HttpRequest, LoadResult
from bench.servers import (
    API_KEYS,
    CALLBACK_SECRET,
    NOTIFY_SECRET,
    OUT_DIR,
    READER_KEY,
    Server,
    callbridge_env,
    create_database,
    database_exists,
    running,
    sqlalchemy_url,
    with_database,
)

DATABASE = "callbridge_bench_read"
CALLS = 1_000_000
CALLERS = 2_000  # distinct `from` numbers: 500 calls each
CALLEES = 200_000  # distinct `to` numbers: 5 calls each
ORDERS = 300_000  # distinct custom_field values
DAYS = 90
# A sequential scan of the 1M-row tables; the seed leaves notifications empty, and the
# planner rightly scans an empty table to hash it.
BIG_TABLE_SCAN = re.compile(r"Seq Scan on (calls|call_legs)\b")
CONCURRENCIES = (1, 16)
BY_SID_REQUESTS = 20_000  # distinct random sids, cycled through

# Status by mod(i * 7919, 1000): mostly finished calls, a few running or unsettled.
# Formatted with the constants above only, no outside input.
SEED_CALLS = f"""
INSERT INTO calls (
    id, sid, status, from_number, to_number, caller_id, direction, custom_field,
    api_client, created_at, updated_at, exotel_created_at, exotel_updated_at,
    start_time, end_time, duration, conversation_duration, price, recording_url, answered_by
)
SELECT
    md5('call' || i)::uuid,
    md5('sid' || i),
    s.status,
    '+9198' || lpad(mod(i, {CALLERS})::text, 8, '0'),
    '+9197' || lpad(mod(i, {CALLEES})::text, 8, '0'),
    '+918047112233',
    'outbound-api',
    CASE WHEN mod(i, 4) = 0 THEN NULL ELSE 'order-' || mod(i, {ORDERS}) END,
    'orders',
    t.created_at,
    t.created_at + interval '1 minute',
    t.created_at,
    t.created_at + interval '1 minute',
    t.created_at,
    t.created_at + interval '1 minute',
    60,
    CASE WHEN s.status = 'completed' THEN 40 ELSE 0 END,
    CASE WHEN s.status = 'completed' THEN 1.5 ELSE 0 END,
    CASE WHEN s.status = 'completed'
        THEN 'https://recordings.exotel.sim/callbridge-sim/' || md5('sid' || i) || '.mp3' END,
    CASE WHEN s.status = 'completed' THEN 'human' END
FROM generate_series(1::bigint, {CALLS}::bigint) AS i
CROSS JOIN LATERAL (
    SELECT %(start)s::timestamptz
        + (i * interval '{DAYS} days' / {CALLS})
        + mod(i * 104729, 1000) * interval '1 millisecond' AS created_at
) AS t
CROSS JOIN LATERAL (
    SELECT CASE
        WHEN mod(i * 7919, 1000) < 620 THEN 'completed'
        WHEN mod(i * 7919, 1000) < 770 THEN 'no-answer'
        WHEN mod(i * 7919, 1000) < 870 THEN 'busy'
        WHEN mod(i * 7919, 1000) < 950 THEN 'failed'
        WHEN mod(i * 7919, 1000) < 975 THEN 'canceled'
        WHEN mod(i * 7919, 1000) < 995 THEN 'in-progress'
        WHEN mod(i * 7919, 1000) < 998 THEN 'queued'
        ELSE 'unknown'
    END AS status
) AS s
"""  # noqa: S608
SEED_LEGS = """
INSERT INTO call_legs (call_id, leg, number, status, on_call_duration, answered_by)
SELECT c.id, l.leg,
    CASE WHEN l.leg = 0 THEN c.from_number ELSE c.to_number END,
    CASE WHEN c.status = 'completed' OR l.leg = 0 THEN 'completed' ELSE c.status END,
    CASE WHEN l.leg = 0 THEN 50 ELSE c.conversation_duration END,
    c.answered_by
FROM calls c CROSS JOIN generate_series(0, 1) AS l(leg)
"""


def sid(i: int) -> str:
    return hashlib.md5(f"sid{i}".encode()).hexdigest()  # noqa: S324 - ids, not security


def caller(i: int) -> str:
    return f"+9198{i % CALLERS:08d}"


def callee(i: int) -> str:
    return f"+9197{i % CALLEES:08d}"


def _head_revision() -> str:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from app.db import PROJECT_ROOT

    config = Config(str(PROJECT_ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(PROJECT_ROOT / "migrations"))
    head = ScriptDirectory.from_config(config).get_current_head()
    assert head is not None
    return head


def _seeded(url: str) -> tuple[bool, datetime | None]:
    """Whether the database holds a complete seed for the newest migration, and its start."""
    try:
        with psycopg.connect(url) as conn:
            version = conn.execute("SELECT version_num FROM alembic_version").fetchone()
            marker = conn.execute(
                "SELECT obj_description('calls'::regclass, 'pg_class')"
            ).fetchone()
    except psycopg.Error:
        return False, None
    if version is None or version[0] != _head_revision() or not marker or not marker[0]:
        return False, None
    seeded_calls, _, start = str(marker[0]).partition(" from ")
    if seeded_calls != f"bench seed: {CALLS} calls":
        return False, None
    return True, datetime.fromisoformat(start)


def seed(server_url: str, *, reseed: bool) -> tuple[str, datetime, float | None]:
    """The seeded database's URL, the seed's first creation time, and the seconds seeding
    took (None when an earlier seed was reused)."""
    url = with_database(server_url, DATABASE)
    if not reseed and database_exists(server_url, DATABASE):
        complete, start = _seeded(url)
        if complete and start is not None:
            return url, start, None
    started = time.perf_counter()
    create_database(server_url, DATABASE, migrated=True)
    start = (datetime.now(UTC) - timedelta(days=DAYS)).replace(microsecond=0)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET maintenance_work_mem = '256MB'")
        conn.execute("SET synchronous_commit = off")
        with conn.transaction():
            conn.execute(SEED_CALLS, {"start": start})
            conn.execute(SEED_LEGS)
        conn.execute("VACUUM (ANALYZE) calls")
        conn.execute("VACUUM (ANALYZE) call_legs")
        conn.execute(
            f"COMMENT ON TABLE calls IS 'bench seed: {CALLS} calls from {start.isoformat()}'"
        )
    return url, start, time.perf_counter() - started


# -- the requests --------------------------------------------------------------------


@dataclass(frozen=True)
class ListQuery:
    name: str
    params: dict[str, str]
    pages: int = 1  # how many pages to follow with next_cursor


def list_queries(start: datetime, pick: random.Random) -> list[ListQuery]:
    """One of each filtered listing a dashboard asks for, with fresh values."""
    i = pick.randrange(1, CALLS)
    day = start + timedelta(days=pick.randrange(1, DAYS - 1))
    return [
        ListQuery("status", {"status": "busy"}, pages=3),
        ListQuery("status (rare)", {"status": "unknown"}),
        ListQuery("from", {"from": caller(i)}, pages=2),
        ListQuery("to", {"to": callee(i)}),
        ListQuery("custom_field", {"custom_field": f"order-{i % ORDERS}"}),
        ListQuery(
            "created window",
            {
                "created_after": day.isoformat(),
                "created_before": (day + timedelta(hours=6)).isoformat(),
            },
            pages=2,
        ),
        ListQuery("status + from", {"status": "completed", "from": caller(i)}),
        ListQuery(
            "status + created_after",
            {"status": "failed", "created_after": day.isoformat()},
            pages=2,
        ),
    ]


def big_page() -> ListQuery:
    """Not a filtered page (no target): the largest page a client may ask for."""
    return ListQuery("unfiltered, 200 a page", {"limit": "200"})


@dataclass
class Comparison:
    """The same requests at the same concurrency to Callbridge and to the reference."""

    what: str
    concurrency: int
    callbridge: LoadResult
    reference: LoadResult
    callbridge_cpu_s: float
    reference_cpu_s: float

    @property
    def ratio(self) -> float:
        return self.callbridge.rps / self.reference.rps if self.reference.rps else 0.0

    @property
    def cpu_ms(self) -> float:
        return self.callbridge_cpu_s * 1000 / self.callbridge.ok if self.callbridge.ok else 0.0

    @property
    def reference_cpu_ms(self) -> float:
        return self.reference_cpu_s * 1000 / self.reference.ok if self.reference.ok else 0.0

    @property
    def all_ok(self) -> bool:
        return all(
            r.ok == r.responses and r.responses > 0 and not r.socket_errors
            for r in (self.callbridge, self.reference)
        )


@dataclass
class ReadResult:
    seed_seconds: float | None
    listing: LoadResult  # the first pass, httpx, one at a time, following cursors
    listing_by_query: dict[str, LoadResult]
    comparisons: list[Comparison] = field(default_factory=list)
    plans: list[tuple[str, str]] = field(default_factory=list)  # (what, EXPLAIN output)
    sequential_scans: list[str] = field(default_factory=list)
    rss_mb: float = 0.0


def _result(latencies: list[float], statuses: Counter[int], elapsed: float) -> LoadResult:
    return LoadResult.from_latencies("httpx", 1, elapsed, latencies, statuses)


async def _list_pages(
    http: httpx.AsyncClient,
    rounds: int,
    start: datetime,
    pick: random.Random,
    queries: Callable[[datetime, random.Random], list[ListQuery]] = list_queries,
    targets: list[str] | None = None,
) -> tuple[LoadResult, dict[str, LoadResult]]:
    """Follow each query's pages; `targets` collects every request's path and query."""
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    per_query: dict[str, tuple[list[float], Counter[int]]] = {}
    started = time.perf_counter()
    for _ in range(rounds):
        for query in queries(start, pick):
            own_latencies, own_statuses = per_query.setdefault(query.name, ([], Counter()))
            params = dict(query.params)
            for _page in range(query.pages):
                sent = time.perf_counter()
                response = await http.get("/calls", params=params)
                latency = (time.perf_counter() - sent) * 1000
                if targets is not None:
                    targets.append(response.request.url.raw_path.decode())
                latencies.append(latency)
                own_latencies.append(latency)
                statuses[response.status_code] += 1
                own_statuses[response.status_code] += 1
                cursor = response.json().get("next_cursor") if response.is_success else None
                if not cursor:
                    break
                params["cursor"] = cursor
    elapsed = time.perf_counter() - started
    return _result(latencies, statuses, elapsed), {
        name: _result(own_latencies, own_statuses, elapsed)
        for name, (own_latencies, own_statuses) in per_query.items()
    }


# -- the plans -------------------------------------------------------------------------


@contextmanager
def captured_statements() -> Iterator[list[tuple[str, Any]]]:
    """Every statement sent through psycopg while the block runs, with its parameters:
    the hot paths' own and SQLAlchemy's (its psycopg driver executes on a cursor too)."""
    statements: list[tuple[str, Any]] = []
    execute = psycopg.AsyncCursor.execute

    async def capture(
        cursor: psycopg.AsyncCursor[Any], query: Any, params: Any = None, **options: Any
    ) -> Any:
        statements.append((str(query), params))
        return await execute(cursor, query, params, **options)

    psycopg.AsyncCursor.execute = capture  # type: ignore[method-assign,assignment]
    try:
        yield statements
    finally:
        psycopg.AsyncCursor.execute = execute  # type: ignore[method-assign]


async def _plans(url: str, start: datetime) -> tuple[list[tuple[str, str]], list[str]]:
    """EXPLAIN ANALYZE of what Callbridge sends for one read of each kind."""
    settings = Settings(
        _env_file=None,
        database_url=sqlalchemy_url(url),
        api_keys=API_KEYS,
        callback_secret=CALLBACK_SECRET,
        notify_secret=NOTIFY_SECRET,
        exotel_account_sid="bench",
        exotel_api_key="bench",
        exotel_api_token="bench-token-not-for-production-0123456789",  # noqa: S106 - reads only
        exotel_base_url="http://127.0.0.1:9",
        exotel_caller_id="08047112233",
        public_base_url="http://127.0.0.1:8000",
        run_jobs=False,
        log_level="WARNING",
    )
    app = create_app(settings)
    pick = random.Random(7)
    requests: list[tuple[str, str, dict[str, str]]] = [
        ("GET /calls/{sid}", f"/calls/{sid(123_456)}", {}),
        ("GET /calls/{id}", f"/calls/{uuid.UUID(hex=hashlib.md5(b'call123456').hexdigest())}", {}),  # noqa: S324
    ]
    requests += [
        (f"GET /calls ({q.name})", "/calls", q.params)
        for q in [*list_queries(start, pick), big_page()]
    ]
    plans: list[tuple[str, str]] = []
    scans: list[str] = []
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://callbridge.bench",
            headers={"Authorization": f"Bearer {READER_KEY}"},
        ) as http,
    ):
        for what, path, params in requests:
            with captured_statements() as statements:
                response = await http.get(path, params=params)
                if what.startswith("GET /calls (status)") and response.is_success:
                    cursor = response.json().get("next_cursor")
                    if cursor:
                        await http.get(path, params={**params, "cursor": cursor})
                        what += " and its next page"
            response.raise_for_status()
            reads = [(s, p) for s, p in statements if s.lstrip().upper().startswith("SELECT")]
            with psycopg.connect(url) as conn:
                for statement, parameters in reads:
                    if "FROM calls" not in statement and "FROM call_legs" not in statement:
                        continue
                    rows = conn.execute(
                        "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + statement,
                        parameters,
                    ).fetchall()
                    plan = "\n".join(str(row[0]) for row in rows)
                    plans.append((what, plan))
                    if BIG_TABLE_SCAN.search(plan):
                        scans.append(what)
            if not any(captured == what for captured, _ in plans):
                # Nothing captured would pass for "no scan": say so instead.
                scans.append(f"{what}: no statement captured")
    return plans, scans


def _compare(
    what: str,
    requests: list[HttpRequest],
    servers: tuple[Server, Server],
    *,
    generator: str,
    concurrency: int,
    duration_s: float,
    warmup_s: float,
) -> Comparison:
    """The same requests to Callbridge, then to the reference, once both are warmed up."""
    for server in servers:
        drive(server, requests, generator=generator, concurrency=concurrency, duration_s=warmup_s)
    measured: list[tuple[LoadResult, float]] = []
    for server in servers:
        cpu_before = server.cpu_seconds()
        result = drive(
            server, requests, generator=generator, concurrency=concurrency, duration_s=duration_s
        )
        measured.append((result, server.cpu_seconds() - cpu_before))
    (callbridge, callbridge_cpu), (reference, reference_cpu) = measured
    return Comparison(what, concurrency, callbridge, reference, callbridge_cpu, reference_cpu)


def _prewarm(url: str) -> None:
    """Read the seeded tables and their indexes into the OS page cache (not Postgres'
    buffers, which hold a fraction of them), if the server has pg_prewarm (contrib)."""
    with psycopg.connect(url, autocommit=True) as conn:
        available = conn.execute(
            "SELECT 1 FROM pg_available_extensions WHERE name = 'pg_prewarm'"
        ).fetchone()
        if available is None:
            return
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_prewarm")
        conn.execute(
            "SELECT pg_prewarm(c.oid::regclass, 'read') FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'public' AND c.relkind IN ('r', 'i')"
        )


def run(
    server_url: str,
    *,
    reseed: bool,
    generator: str,
    list_rounds: int,
    duration_s: float,
    warmup_s: float,
) -> ReadResult:
    url, start, seed_seconds = seed(server_url, reseed=reseed)
    plans, scans = asyncio.run(_plans(url, start))
    env = callbridge_env(
        url,
        exotel_url="http://127.0.0.1:9",
        public_base_url="http://127.0.0.1:8000",
        run_jobs="false",
    )
    reference_env = {"REFERENCE_DATABASE_URL": url}
    pick = random.Random(11)
    authorization = (("Authorization", f"Bearer {READER_KEY}"),)
    by_sid = [
        HttpRequest("GET", f"/calls/{sid(pick.randrange(1, CALLS + 1))}", headers=authorization)
        for _ in range(BY_SID_REQUESTS)
    ]
    with (
        running(Server("callbridge", env, OUT_DIR / "read-callbridge.log")) as server,
        running(Server("read-reference", reference_env, OUT_DIR / "read-reference.log")) as ref,
    ):

        async def first_pass() -> tuple[LoadResult, dict[str, LoadResult], list[str]]:
            async with httpx.AsyncClient(
                base_url=server.url,
                timeout=30,
                headers={"Authorization": f"Bearer {READER_KEY}"},
            ) as http:
                await _list_pages(http, 2, start, pick)  # warm-up
                targets: list[str] = []
                listing, per_query = await _list_pages(
                    http, list_rounds, start, pick, targets=targets
                )
                _, big = await _list_pages(
                    http, max(list_rounds // 3, 1), start, pick, lambda *_: [big_page()]
                )
                return listing, {**per_query, **big}, targets

        listing, per_query, targets = asyncio.run(first_pass())
        pages = [HttpRequest("GET", target, headers=authorization) for target in targets]
        comparisons = []
        for what, requests in (("GET /calls/{sid}", by_sid), ("GET /calls filtered", pages)):
            for concurrency in CONCURRENCIES:
                _prewarm(url)
                comparisons.append(
                    _compare(
                        what,
                        requests,
                        (server, ref),
                        generator=generator,
                        concurrency=concurrency,
                        duration_s=duration_s,
                        warmup_s=warmup_s,
                    )
                )
        rss = server.rss_bytes()
    return ReadResult(
        seed_seconds=seed_seconds,
        listing=listing,
        listing_by_query=per_query,
        comparisons=comparisons,
        plans=plans,
        sequential_scans=scans,
        rss_mb=rss / 2**20,
    )
