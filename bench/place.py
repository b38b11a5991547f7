"""Placing calls: the latency Callbridge adds to POST /calls over calling Exotel directly.

The Exotel simulator runs in its own process. The baseline is its connect API called
with httpx exactly as Callbridge calls it (same form, same Basic auth); the measured
path is POST /calls on Callbridge (its own process, in live mode against the same
simulator), also with httpx, from the same client. Both at the same concurrency, in
interleaved rounds; "added" is the difference of the two distributions' percentiles.

Beside them, the same POST /calls to the placing reference (bench/reference.py
`place_app`, its own process): two statements around Callbridge's own HTTP client and
nothing else. What it adds is what the stack itself costs (uvicorn, psycopg, the client,
Postgres, this machine's cores); what Callbridge adds beyond it is Callbridge's own. The
CPU a call of each server process is measured over the same calls.

The limiters are kept out of the way, whatever their implementation, so that what is
measured is Callbridge's own cost (the limiters' statements included), never a wait:
- every round runs in a fresh database with a fresh Callbridge process, and places at
  most EXOTEL_BUDGET (200) calls, which an in-process bucket of 200 a minute lets
  through at once;
- the per-client limit is set far above what a round sends;
- a fleet-wide limiter keeping GCRA buckets in Postgres (`rate_limit_buckets`, when
  the migrations made it) lets only a tenth of the budget through at once (20 calls),
  then one every 0.33 s: a bench-only trigger in the round's database keeps every
  bucket empty (each write sets its `tat` an hour back), so each reservation is still
  one statement and is always granted at once. Production never has the trigger.
The rounds check it: no answer may be a 429 or a 503 exotel-rate-limited.

The simulator runs at real speed (SIMULATOR_SPEED=1): its calls last at least 26 s, so
no status callback lands on Callbridge while a round is measured.
"""

from __future__ import annotations

import asyncio
import functools
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx
import psycopg

from app.calls.tokens import CallbackTokens
from app.exotel.client import ConnectRequest
from app.exotel.simulator import SimulatorConfig
from bench.load import LoadResult
from bench.servers import (
    CALLBACK_SECRET,
    OUT_DIR,
    WRITER_KEY,
    Server,
    callbridge_env,
    create_database,
    drop_database,
    running,
)

CONCURRENCY = 32
EXOTEL_BUDGET = 200  # the most EXOTEL_REQUESTS_PER_MINUTE allows, so a bucket's burst
# The warm-up runs at the measured concurrency: each round starts a fresh process, whose
# pools (Postgres, Exotel, the client's) would otherwise open their connections, and
# Postgres fork a backend for each, inside the measured calls.
WARMUP = CONCURRENCY
SEQUENTIAL = 40
CONCURRENT = EXOTEL_BUDGET - WARMUP - SEQUENTIAL
DATABASE = "callbridge_bench_place"
REFERENCE_DATABASE = "callbridge_bench_place_reference"
# Far above a round's calls, so that the per-client limit never refuses one.
CALLS_PER_MINUTE_PER_CLIENT = 1_000_000
# Bench only: every write to a GCRA bucket leaves it empty (see the module's docstring).
EMPTY_BUCKETS = """
CREATE FUNCTION bench_keep_bucket_empty() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.tat := clock_timestamp() - interval '1 hour';
    RETURN NEW;
END $$;
CREATE TRIGGER bench_keep_bucket_empty BEFORE INSERT OR UPDATE ON rate_limit_buckets
    FOR EACH ROW EXECUTE FUNCTION bench_keep_bucket_empty();
"""
CALLER_ID = "+918047112233"
# Where the baseline's StatusCallback points: nothing listens (no callback is due anyway).
DEAD_CALLBACK = "http://127.0.0.1:9/callbacks/exotel"


@dataclass
class PlaceResult:
    direct: LoadResult
    callbridge: LoadResult
    reference: LoadResult
    direct_sequential: LoadResult
    callbridge_sequential: LoadResult
    reference_sequential: LoadResult
    # CPU of the server process a call (ms), by path and concurrency ("" for 32, "1").
    cpu_ms: dict[str, float]
    rounds: int
    buckets_pinned: bool  # a Postgres limiter existed and its buckets were kept empty
    limited: int  # answers that were a limiter's refusal (429, 503): must be 0

    @property
    def added_p50_ms(self) -> float:
        return self.callbridge.p50_ms - self.direct.p50_ms

    @property
    def added_p99_ms(self) -> float:
        return self.callbridge.p99_ms - self.direct.p99_ms

    @property
    def added_sequential_p50_ms(self) -> float:
        return self.callbridge_sequential.p50_ms - self.direct_sequential.p50_ms

    @property
    def added_sequential_p99_ms(self) -> float:
        return self.callbridge_sequential.p99_ms - self.direct_sequential.p99_ms


class Numbers:
    """A different callee for every call, none ending in a simulator scenario (99xx)."""

    def __init__(self) -> None:
        self._next = 0

    def take(self) -> tuple[str, str]:
        self._next += 1
        return "+919876543210", f"+9197{self._next:06d}00"


Sample = tuple[float, int]  # latency in ms, status


async def _closed_loop(
    send: Callable[[], Awaitable[int]], *, total: int, concurrency: int
) -> tuple[list[Sample], float]:
    samples: list[Sample] = []
    remaining = total

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            status = await send()
            samples.append(((time.perf_counter() - started) * 1000, status))

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return samples, time.perf_counter() - started


def _result(samples: list[Sample], elapsed: float, concurrency: int) -> LoadResult:
    return LoadResult.from_latencies(
        "httpx",
        concurrency,
        elapsed,
        [latency for latency, _ in samples],
        Counter(status for _, status in samples),
    )


class Round:
    """One round: the same numbers of calls directly and through a fresh Callbridge."""

    def __init__(self, simulator: Server, numbers: Numbers) -> None:
        self.simulator = simulator
        self.numbers = numbers
        self.tokens = CallbackTokens(CALLBACK_SECRET)
        config = SimulatorConfig()
        self.connect_path = f"/v1/Accounts/{config.account_sid}/Calls/connect.json"
        self.auth = httpx.BasicAuth(config.api_key, config.api_token)

    async def direct(
        self, http: httpx.AsyncClient, total: int, concurrency: int
    ) -> tuple[list[Sample], float]:
        async def send() -> int:
            from_number, to_number = self.numbers.take()
            call_id = uuid.uuid4()
            form = ConnectRequest(
                from_number=from_number,
                to_number=to_number,
                caller_id=CALLER_ID,
                status_callback=f"{DEAD_CALLBACK}?token={self.tokens.for_call(call_id)}",
            ).form()
            response = await http.post(self.connect_path, data=form, auth=self.auth)
            return response.status_code

        return await _closed_loop(send, total=total, concurrency=concurrency)

    async def through(
        self, http: httpx.AsyncClient, total: int, concurrency: int
    ) -> tuple[list[Sample], float]:
        """POST /calls, to Callbridge or to the placing reference (`http`'s base URL)."""

        async def send() -> int:
            from_number, to_number = self.numbers.take()
            response = await http.post(
                "/calls",
                json={"from": from_number, "to": to_number, "custom_field": "bench"},
                headers={"Idempotency-Key": uuid.uuid4().hex},
            )
            return response.status_code

        return await _closed_loop(send, total=total, concurrency=concurrency)


def _client(base_url: str, headers: dict[str, str] | None = None) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=base_url,
        timeout=30,
        headers=headers,
        limits=httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY),
    )


def round_database(server_url: str, name: str = DATABASE) -> tuple[str, bool]:
    """A fresh, migrated database for one round; whether it has GCRA buckets, now pinned."""
    url = create_database(server_url, name, migrated=True)
    with psycopg.connect(url, autocommit=True) as conn:
        found = conn.execute("SELECT to_regclass('rate_limit_buckets')").fetchone()
        has_buckets = found is not None and found[0] is not None
        if has_buckets:
            conn.execute(EMPTY_BUCKETS)
    return url, has_buckets


def _reference(simulator: Server, database: str) -> Server:
    """The placing reference, on a database of its own, with Callbridge's Exotel settings."""
    reference = Server("place-reference", {}, OUT_DIR / "place-reference.log")
    reference.env = {
        **callbridge_env(database, exotel_url=simulator.url, public_base_url=reference.url),
        "REFERENCE_DATABASE_URL": database,
    }
    return reference


# The paths measured in each round, in the order they take turns; "d" is the direct one.
PATHS = ("d", "c", "r")


def run(server_url: str, *, rounds: int) -> PlaceResult:
    numbers = Numbers()
    keys = [path + concurrency for path in PATHS for concurrency in ("", "1")]
    collected: dict[str, list[Sample]] = {key: [] for key in keys}
    elapsed: dict[str, float] = {key: 0.0 for key in keys}
    cpu_s: dict[str, float] = {key: 0.0 for key in keys}
    pinned = True
    # No Exotel limit in the simulator: the baseline's direct connects count too, and the
    # rounds measure cost, not the limit (each Callbridge round stays within 200).
    simulator = Server(
        "simulator",
        {"SIMULATOR_SPEED": "1", "SIMULATOR_REQUESTS_PER_MINUTE": "none"},
        OUT_DIR / "place-simulator.log",
    )
    try:
        with running(simulator):
            for _ in range(rounds):
                database, has_buckets = round_database(server_url)
                pinned = pinned and has_buckets
                reference = _reference(
                    simulator, create_database(server_url, REFERENCE_DATABASE, migrated=False)
                )
                session = Round(simulator, numbers)
                callbridge = Server("callbridge", {}, OUT_DIR / "place-callbridge.log")
                callbridge.env = callbridge_env(
                    database,
                    exotel_url=simulator.url,
                    public_base_url=callbridge.url,
                    exotel_requests_per_minute=str(EXOTEL_BUDGET),
                    calls_per_minute_per_client=str(CALLS_PER_MINUTE_PER_CLIENT),
                )

                async def measure(
                    callbridge: Server = callbridge,
                    reference: Server = reference,
                    session: Round = session,
                ) -> None:
                    headers = {"Authorization": f"Bearer {WRITER_KEY}"}
                    async with (
                        _client(simulator.url) as direct,
                        _client(callbridge.url, headers) as through_callbridge,
                        _client(reference.url) as through_reference,
                    ):
                        paths = {
                            "d": (simulator, functools.partial(session.direct, direct)),
                            "c": (
                                callbridge,
                                functools.partial(session.through, through_callbridge),
                            ),
                            "r": (
                                reference,
                                functools.partial(session.through, through_reference),
                            ),
                        }
                        for _, send in paths.values():
                            await send(WARMUP, CONCURRENCY)
                        for key, concurrency, total in (
                            ("1", 1, SEQUENTIAL),
                            ("", CONCURRENCY, CONCURRENT),
                        ):
                            for path, (server, send) in paths.items():
                                started_cpu = server.cpu_seconds()
                                samples, seconds = await send(total, concurrency)
                                cpu_s[path + key] += server.cpu_seconds() - started_cpu
                                collected[path + key] += samples
                                elapsed[path + key] += seconds

                with running(callbridge), running(reference):
                    asyncio.run(measure())
    finally:
        drop_database(server_url, DATABASE)
        drop_database(server_url, REFERENCE_DATABASE)
    limited = sum(
        1
        for samples in (collected["c"], collected["c1"])
        for _, status in samples
        if status in (429, 503)
    )

    def result(key: str) -> LoadResult:
        return _result(collected[key], elapsed[key], 1 if key.endswith("1") else CONCURRENCY)

    return PlaceResult(
        direct=result("d"),
        callbridge=result("c"),
        reference=result("r"),
        direct_sequential=result("d1"),
        callbridge_sequential=result("c1"),
        reference_sequential=result("r1"),
        cpu_ms={key: cpu_s[key] / len(collected[key]) * 1000 for key in keys},
        rounds=rounds,
        buckets_pinned=pinned,
        limited=limited,
    )
