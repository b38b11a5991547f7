"""Callback ingestion: terminal JSON callbacks at concurrency 64, Callbridge vs the reference.

Calls are stored straight into Callbridge's database with COPY (as if placed), each with
its token from CallbackTokens and the configured CALLBACK_SECRET; every measured request
is the terminal callback of a different call: Callbridge stores it (one statement) and
acknowledges, and its applier (in the same process) applies it in the background. The
reference route gets the same requests on a database of its own on the same Postgres,
with the same uvicorn settings.

Besides throughput, for each server: CPU time of the server process per 2xx answer
(psutil, user + system), Callbridge's counted until its applier has drained what the
load stored, since that work is part of each callback's cost. And the apply lag, from
the database: `processed_at - received_at` of the events stored under the load, and of
IDLE_CALLBACKS more sent one at a time (calls kept out of the load), for which the time
from the 2xx to the call row showing the new status is also measured by polling it.
"""

from __future__ import annotations

import json
import math
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx
import psycopg
from psycopg import sql

from app.calls.tokens import CallbackTokens
from app.exotel.schemas import EXOTEL_TIMEZONE
from bench.load import HttpRequest, LoadResult, percentile, python_load, wrk_load
from bench.servers import (
    CALLBACK_SECRET,
    OUT_DIR,
    Server,
    callbridge_env,
    create_database,
    drop_database,
    running,
)

CONCURRENCY = 64
WARMUP_CALLS = 5_000
# Callbacks sent one at a time, IDLE_PAUSE_S apart, for the apply lag of an idle service.
IDLE_CALLBACKS = 50
IDLE_PAUSE_S = 0.2
# How long the applier may take to drain a backlog before the bench gives up waiting.
DRAIN_TIMEOUT_S = 120.0
# How long a call may take to show an idle callback before the bench stops looking.
VISIBLE_TIMEOUT_S = 5.0
FINAL_STATUSES = ("completed", "completed", "completed", "busy", "no-answer", "failed")
EXOTEL_TIME = "%Y-%m-%d %H:%M:%S"


@dataclass(frozen=True)
class SeededCall:
    id: uuid.UUID
    sid: str
    from_number: str
    to_number: str


@dataclass(frozen=True)
class Lag:
    """A distribution of delays, in milliseconds."""

    count: int
    p50_ms: float
    p99_ms: float
    max_ms: float

    @classmethod
    def of(cls, delays_ms: Sequence[float]) -> Lag:
        ordered = sorted(delays_ms)
        return cls(
            len(ordered),
            percentile(ordered, 0.50),
            percentile(ordered, 0.99),
            ordered[-1] if ordered else math.nan,
        )


@dataclass
class IngestResult:
    callbridge: LoadResult
    reference: LoadResult
    rss_idle_mb: float
    rss_max_mb: float
    events_stored: int
    reference_rows: int
    reference_rows_measured: int  # rows the reference stored during the measured load
    requests_prepared: int
    callbridge_cpu_s: float  # the measured load and draining its backlog
    reference_cpu_s: float
    backlog_at_end: int  # events waiting when the load stopped
    drain_s: float  # from the end of the load until none waited
    drained: bool
    lag_load: Lag  # processed_at - received_at, events stored under the load
    lag_idle: Lag  # the same, IDLE_CALLBACKS sent one at a time
    visible_idle: Lag  # 2xx to the call row showing it, seen by polling (client clock)

    @property
    def ratio(self) -> float:
        return self.callbridge.rps / self.reference.rps if self.reference.rps else 0.0

    # Per request the server handled: the load generator does not count the answers
    # still in flight when it stops, the database has every one stored.
    @property
    def cpu_ms_per_callback(self) -> float:
        return _per_request_ms(self.callbridge_cpu_s, max(self.events_stored, self.callbridge.ok))

    @property
    def reference_cpu_ms_per_callback(self) -> float:
        handled = max(self.reference_rows_measured, self.reference.ok)
        return _per_request_ms(self.reference_cpu_s, handled)


def _per_request_ms(cpu_s: float, requests: int) -> float:
    return cpu_s * 1000 / requests if requests else math.nan


def seed_calls(database_url: str, count: int) -> list[SeededCall]:
    """`count` in-progress calls with their two legs, as if Exotel had just accepted them."""
    calls = [
        SeededCall(
            id=uuid.uuid4(),
            sid=uuid.uuid4().hex,
            from_number=f"+9198{index % 10_000_000:08d}",
            to_number=f"+9197{index % 10_000_000:08d}",
        )
        for index in range(count)
    ]
    now = datetime.now(UTC)
    with psycopg.connect(database_url) as conn, conn.cursor() as cursor:
        with cursor.copy(
            "COPY calls (id, sid, status, from_number, to_number, caller_id, direction,"
            " api_client, created_at, updated_at) FROM STDIN"
        ) as copy:
            for call in calls:
                copy.write_row(
                    (
                        call.id,
                        call.sid,
                        "in-progress",
                        call.from_number,
                        call.to_number,
                        "+918047112233",
                        "outbound-api",
                        "bench",
                        now,
                        now,
                    )
                )
        with cursor.copy("COPY call_legs (call_id, leg, number) FROM STDIN") as copy:
            for call in calls:
                copy.write_row((call.id, 0, call.from_number))
                copy.write_row((call.id, 1, call.to_number))
    return calls


def terminal_callback(call: SeededCall, index: int) -> dict[str, object]:
    """Exotel's terminal callback for the call, JSON-shaped (StatusCallbackContentType)."""
    created = datetime.now(EXOTEL_TIMEZONE).replace(microsecond=0)
    status = FINAL_STATUSES[index % len(FINAL_STATUSES)]
    talk = 20 + index % 40 if status == "completed" else 0
    ended = created + timedelta(seconds=8 + talk)
    return {
        "CallSid": call.sid,
        "EventType": "terminal",
        "DateCreated": created.strftime(EXOTEL_TIME),
        "DateUpdated": ended.strftime(EXOTEL_TIME),
        "Status": status,
        "To": call.to_number,
        "From": call.from_number,
        "PhoneNumberSid": "+918047112233",
        "StartTime": created.strftime(EXOTEL_TIME),
        "EndTime": ended.strftime(EXOTEL_TIME),
        "Direction": "outbound-api",
        "RecordingUrl": None,
        "ConversationDuration": talk,
        "Legs": [
            {"OnCallDuration": talk + 5, "Status": "completed"},
            {"OnCallDuration": talk, "Status": "completed" if talk else status},
        ],
    }


def callback_requests(calls: Sequence[SeededCall], tokens: CallbackTokens) -> list[HttpRequest]:
    return [
        HttpRequest(
            "POST",
            f"/callbacks/exotel?token={tokens.for_call(call.id)}",
            json.dumps(terminal_callback(call, index), separators=(",", ":")).encode(),
            (("Content-Type", "application/json"),),
        )
        for index, call in enumerate(calls)
    ]


class RssSampler:
    """The largest resident set size of a process, sampled every `interval_s`."""

    def __init__(self, server: Server, interval_s: float = 0.1) -> None:
        self._server = server
        self._interval_s = interval_s
        self._stop = threading.Event()
        self.max_bytes = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.max_bytes = max(self.max_bytes, self._server.rss_bytes())
            self._stop.wait(self._interval_s)

    @contextmanager
    def sampling(self) -> Iterator[RssSampler]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join()
            self.max_bytes = max(self.max_bytes, self._server.rss_bytes())


def drive(
    server: Server,
    requests: Sequence[HttpRequest],
    *,
    generator: str,
    concurrency: int,
    duration_s: float,
) -> LoadResult:
    if generator == "wrk":
        return wrk_load(
            "127.0.0.1",
            server.port,
            requests,
            concurrency=concurrency,
            duration_s=duration_s,
            work_dir=OUT_DIR,
        )
    import asyncio

    return asyncio.run(
        python_load(
            "127.0.0.1", server.port, requests, concurrency=concurrency, duration_s=duration_s
        )
    )


def run(
    server_url: str, *, generator: str, duration_s: float, warmup_s: float, calls: int
) -> IngestResult:
    tokens = CallbackTokens(CALLBACK_SECRET)
    callbridge_db = create_database(server_url, "callbridge_bench_ingest", migrated=True)
    reference_db = create_database(server_url, "callbridge_bench_reference", migrated=False)
    try:
        seeded = seed_calls(callbridge_db, calls + IDLE_CALLBACKS)
        idle_calls, seeded = seeded[-IDLE_CALLBACKS:], seeded[:-IDLE_CALLBACKS]
        prepared = callback_requests(seeded, tokens)
        warmup, measured = prepared[:WARMUP_CALLS], prepared[WARMUP_CALLS:]
        env = callbridge_env(
            callbridge_db,
            exotel_url="http://127.0.0.1:9",
            public_base_url="http://127.0.0.1:8000",
        )
        with running(Server("callbridge", env, OUT_DIR / "ingest-callbridge.log")) as server:
            rss_idle = server.rss_bytes()
            drive(server, warmup, generator=generator, concurrency=CONCURRENCY, duration_s=warmup_s)
            _drain(callbridge_db)
            first_event = _last_event_id(callbridge_db)
            cpu_before = server.cpu_seconds()
            with RssSampler(server).sampling() as rss:
                callbridge = drive(
                    server,
                    measured,
                    generator=generator,
                    concurrency=CONCURRENCY,
                    duration_s=duration_s,
                )
            backlog = _backlog(callbridge_db)
            drain_s, drained = _drain(callbridge_db)
            callbridge_cpu = server.cpu_seconds() - cpu_before
            last_event = _last_event_id(callbridge_db)
            visible_idle = _send_idle(server, callbridge_db, idle_calls, tokens)
            _drain(callbridge_db)
        reference_env = {"REFERENCE_DATABASE_URL": reference_db}
        with running(Server("reference", reference_env, OUT_DIR / "ingest-reference.log")) as ref:
            drive(ref, warmup, generator=generator, concurrency=CONCURRENCY, duration_s=warmup_s)
            rows_before = _count(reference_db, "callbacks")
            cpu_before = ref.cpu_seconds()
            reference = drive(
                ref, measured, generator=generator, concurrency=CONCURRENCY, duration_s=duration_s
            )
            reference_cpu = ref.cpu_seconds() - cpu_before
            reference_rows = _count(reference_db, "callbacks")
        return IngestResult(
            callbridge=callbridge,
            reference=reference,
            rss_idle_mb=rss_idle / 2**20,
            rss_max_mb=rss.max_bytes / 2**20,
            events_stored=last_event - first_event,
            reference_rows=reference_rows,
            reference_rows_measured=reference_rows - rows_before,
            requests_prepared=len(measured),
            callbridge_cpu_s=callbridge_cpu,
            reference_cpu_s=reference_cpu,
            backlog_at_end=backlog,
            drain_s=drain_s,
            drained=drained,
            lag_load=_apply_lag(callbridge_db, "id > %s AND id <= %s", (first_event, last_event)),
            lag_idle=_apply_lag(
                callbridge_db, "call_id = ANY(%s)", ([call.id for call in idle_calls],)
            ),
            visible_idle=visible_idle,
        )
    finally:
        drop_database(server_url, "callbridge_bench_ingest")
        drop_database(server_url, "callbridge_bench_reference")


def _scalar(database_url: str, query: str, params: Sequence[object] = ()) -> int:
    with psycopg.connect(database_url) as conn:
        found = conn.execute(query, params).fetchone()
    return int(found[0]) if found and found[0] is not None else 0


def _backlog(database_url: str) -> int:
    return _scalar(database_url, "SELECT count(*) FROM call_events WHERE processed_at IS NULL")


def _last_event_id(database_url: str) -> int:
    return _scalar(database_url, "SELECT max(id) FROM call_events")


def _drain(database_url: str, timeout_s: float = DRAIN_TIMEOUT_S) -> tuple[float, bool]:
    """Wait until no stored callback waits for the applier: (seconds waited, drained)."""
    started = time.perf_counter()
    with psycopg.connect(database_url, autocommit=True) as conn:
        while True:
            row = conn.execute(
                "SELECT count(*) FROM call_events WHERE processed_at IS NULL"
            ).fetchone()
            waited = time.perf_counter() - started
            if row is not None and row[0] == 0:
                return waited, True
            if waited > timeout_s:
                return waited, False
            time.sleep(0.05)


def _apply_lag(database_url: str, where: str, params: Sequence[object]) -> Lag:
    """processed_at - received_at of the processed events `where` selects."""
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT extract(epoch FROM processed_at - received_at)::float8 * 1000"  # noqa: S608
            f" FROM call_events WHERE processed_at IS NOT NULL AND {where}",
            params,
        ).fetchall()
    return Lag.of([float(row[0]) for row in rows])


def _send_idle(
    server: Server, database_url: str, calls: Sequence[SeededCall], tokens: CallbackTokens
) -> Lag:
    """Send one callback at a time to an otherwise idle service; for each, the time from
    its 2xx until its call shows the new status (polled every millisecond or so)."""
    visible_ms: list[float] = []
    requests = callback_requests(calls, tokens)
    with (
        httpx.Client(base_url=server.url, timeout=10) as http,
        psycopg.connect(database_url, autocommit=True) as conn,
    ):
        for call, request in zip(calls, requests, strict=True):
            time.sleep(IDLE_PAUSE_S)
            response = http.post(
                request.target, content=request.body, headers=dict(request.headers)
            )
            acknowledged = time.perf_counter()
            response.raise_for_status()
            deadline = acknowledged + VISIBLE_TIMEOUT_S
            while time.perf_counter() < deadline:
                row = conn.execute("SELECT status FROM calls WHERE id = %s", (call.id,)).fetchone()
                if row is not None and row[0] != "in-progress":
                    visible_ms.append((time.perf_counter() - acknowledged) * 1000)
                    break
                time.sleep(0.001)
    return Lag.of(visible_ms)


def _count(database_url: str, table: str) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table)))
        found = row.fetchone()
    return int(found[0]) if found else 0
