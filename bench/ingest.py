"""Callback ingestion: terminal JSON callbacks at concurrency 64, Callbridge vs the reference.

Calls are stored straight into Callbridge's database with COPY (as if placed), each with
its token from CallbackTokens and the configured CALLBACK_SECRET; every measured request
is the terminal callback of a different call, so each one locks a call, stores the raw
event and applies it. The reference route gets the same requests on a database of its
own on the same Postgres, with the same uvicorn settings.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import psycopg
from psycopg import sql

from app.calls.tokens import CallbackTokens
from app.exotel.schemas import EXOTEL_TIMEZONE
from bench.load import HttpRequest, LoadResult, python_load, wrk_load
from bench.servers import (
    OUT_DIR,
    Server,
    callbridge_env,
    create_database,
    drop_database,
    running,
)

CONCURRENCY = 64
CALLBACK_SECRET = "bench-callback-secret-not-for-production"  # noqa: S105
API_KEYS = "bench:bench-writer-key-not-for-production-0123:write"
WARMUP_CALLS = 5_000
FINAL_STATUSES = ("completed", "completed", "completed", "busy", "no-answer", "failed")
EXOTEL_TIME = "%Y-%m-%d %H:%M:%S"


@dataclass(frozen=True)
class SeededCall:
    id: uuid.UUID
    sid: str
    from_number: str
    to_number: str


@dataclass
class IngestResult:
    callbridge: LoadResult
    reference: LoadResult
    rss_idle_mb: float
    rss_max_mb: float
    events_stored: int
    reference_rows: int
    requests_prepared: int

    @property
    def ratio(self) -> float:
        return self.callbridge.rps / self.reference.rps if self.reference.rps else 0.0


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
        seeded = seed_calls(callbridge_db, calls)
        prepared = callback_requests(seeded, tokens)
        warmup, measured = prepared[:WARMUP_CALLS], prepared[WARMUP_CALLS:]
        env = callbridge_env(
            callbridge_db,
            callback_secret=CALLBACK_SECRET,
            api_keys=API_KEYS,
            exotel_url="http://127.0.0.1:9",
            public_base_url="http://127.0.0.1:8000",
        )
        with running(Server("callbridge", env, OUT_DIR / "ingest-callbridge.log")) as server:
            rss_idle = server.rss_bytes()
            drive(server, warmup, generator=generator, concurrency=CONCURRENCY, duration_s=warmup_s)
            events_before = _count(callbridge_db, "call_events")
            with RssSampler(server).sampling() as rss:
                callbridge = drive(
                    server,
                    measured,
                    generator=generator,
                    concurrency=CONCURRENCY,
                    duration_s=duration_s,
                )
        reference_env = {"REFERENCE_DATABASE_URL": reference_db}
        with running(Server("reference", reference_env, OUT_DIR / "ingest-reference.log")) as ref:
            drive(ref, warmup, generator=generator, concurrency=CONCURRENCY, duration_s=warmup_s)
            reference = drive(
                ref, measured, generator=generator, concurrency=CONCURRENCY, duration_s=duration_s
            )
        return IngestResult(
            callbridge=callbridge,
            reference=reference,
            rss_idle_mb=rss_idle / 2**20,
            rss_max_mb=rss.max_bytes / 2**20,
            events_stored=_count(callbridge_db, "call_events") - events_before,
            reference_rows=_count(reference_db, "callbacks"),
            requests_prepared=len(measured),
        )
    finally:
        drop_database(server_url, "callbridge_bench_ingest")
        drop_database(server_url, "callbridge_bench_reference")


def _count(database_url: str, table: str) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table)))
        found = row.fetchone()
    return int(found[0]) if found else 0
