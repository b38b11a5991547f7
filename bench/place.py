"""Placing calls: the latency Callbridge adds to POST /calls over calling Exotel directly.

The Exotel simulator runs in its own process. The baseline is its connect API called
with httpx exactly as Callbridge calls it (same form, same Basic auth); the measured
path is POST /calls on Callbridge (its own process, in live mode against the same
simulator), also with httpx, from the same client. Both at the same concurrency, in
interleaved rounds; "added" is the difference of the two distributions' percentiles.

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
    direct_sequential: LoadResult
    callbridge_sequential: LoadResult
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

    async def callbridge(
        self, http: httpx.AsyncClient, total: int, concurrency: int
    ) -> tuple[list[Sample], float]:
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


def run(server_url: str, *, rounds: int) -> PlaceResult:
    numbers = Numbers()
    collected: dict[str, list[Sample]] = {name: [] for name in ("d", "c", "d1", "c1")}
    elapsed: dict[str, float] = {name: 0.0 for name in collected}
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
                    callbridge: Server = callbridge, session: Round = session
                ) -> None:
                    async with (
                        _client(simulator.url) as direct,
                        _client(
                            callbridge.url, headers={"Authorization": f"Bearer {WRITER_KEY}"}
                        ) as through,
                    ):
                        await session.direct(direct, WARMUP, CONCURRENCY)
                        await session.callbridge(through, WARMUP, CONCURRENCY)
                        for key, concurrency, total in (
                            ("1", 1, SEQUENTIAL),
                            ("", CONCURRENCY, CONCURRENT),
                        ):
                            samples, seconds = await session.direct(direct, total, concurrency)
                            collected["d" + key] += samples
                            elapsed["d" + key] += seconds
                            samples, seconds = await session.callbridge(through, total, concurrency)
                            collected["c" + key] += samples
                            elapsed["c" + key] += seconds

                with running(callbridge):
                    asyncio.run(measure())
    finally:
        drop_database(server_url, DATABASE)
    limited = sum(
        1
        for samples in (collected["c"], collected["c1"])
        for _, status in samples
        if status in (429, 503)
    )
    return PlaceResult(
        direct=_result(collected["d"], elapsed["d"], CONCURRENCY),
        callbridge=_result(collected["c"], elapsed["c"], CONCURRENCY),
        direct_sequential=_result(collected["d1"], elapsed["d1"], 1),
        callbridge_sequential=_result(collected["c1"], elapsed["c1"], 1),
        rounds=rounds,
        buckets_pinned=pinned,
        limited=limited,
    )
