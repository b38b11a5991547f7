"""Three replicas and a worker on one Postgres keep Exotel's budget and every client's limit.

The fleet runs as production does: `callbridge serve` replicas (RUN_JOBS=false) and one
`callbridge worker`, each in its own process, in live mode against the simulator behind
Exotel's front door (tests/fleet/front_door.py), which records every request and answers
429 past 200 in any 60 s. Clients place calls through all replicas as fast as they are
let (pausing briefly after a 429 or 503), while the worker looks up calls not yet
finished. Then:
- the front door answered no 429, and no 60 s window held more than 200 requests of
  any kind; the arrivals conform to the fleet's GCRA budget, which bounds every window,
  whatever its length (this is what the quick size checks: 25 s of traffic);
- no call was sent to Exotel twice;
- no client got more calls accepted in any 60 s than CALLS_PER_MINUTE_PER_CLIENT, counted
  across all replicas (and conforming to the client budget).

FLEET_FULL=1 drives for 75 s, crossing a 60 s window boundary, and checks the 60 s
windows directly as well. Everything listens on 127.0.0.1; every process is stopped by
its pid.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx
import psycopg

from app.db import PROJECT_ROOT
from app.limits.budget import Budget
from app.limits.gcra import CLIENT_SLACK, EXOTEL_SEND_SLACK
from bench.servers import (
    Server,
    create_database,
    drop_database,
    free_port,
    postgres_server,
)
from tests.faults.harness import LOGS, Report, call_id_of, callbridge, simulator
from tests.fleet.front_door import WINDOW_S, Arrival, FrontDoor
from tests.jobs.conftest import serving

EXOTEL_LIMIT = 200
CLIENT_LIMIT = 90
CLIENTS = ("orders", "billing", "support")
CONCURRENCY = 8  # callers per client
REFUSED_PAUSE_S = 0.5
REPLICAS = 3
SETTLE_S = 8.0


def full() -> bool:
    return os.environ.get("FLEET_FULL") == "1"


def secret(client: str) -> str:
    return f"{client}-fleet-secret-of-at-least-32-characters"


SETTINGS: dict[str, object] = {
    "run_jobs": "false",
    "api_keys": ",".join(f"{client}:{secret(client)}:write" for client in CLIENTS),
    "calls_per_minute_per_client": CLIENT_LIMIT,
    "exotel_requests_per_minute": EXOTEL_LIMIT,
    "exotel_timeout_s": 5,
    # The worker looks up calls still open 3 s after they were placed: background
    # requests mixed with the placing ones.
    "reconcile_after_s": 3,
    "reconcile_interval_s": 1,
}


@dataclass
class Worker:
    """`callbridge worker` in its own process, probes on a port of its own."""

    env: Mapping[str, str]
    log_path: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    def launch(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "app.cli", "worker"],
                cwd=PROJECT_ROOT,
                env={**os.environ, **self.env, "WORKER_PORT": str(self.port)},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    async def ready(self, timeout_s: float = 60.0) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout_s
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.port}") as http:
            while True:
                assert self.process.poll() is None, f"the worker exited; see {self.log_path}"
                try:
                    if (await http.get("/healthz")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "the worker did not serve /healthz"
                await asyncio.sleep(0.2)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


@asynccontextmanager
async def front_door(simulator_url: str) -> AsyncIterator[tuple[FrontDoor, str]]:
    async with httpx.AsyncClient(base_url=simulator_url, timeout=30) as upstream:
        door = FrontDoor(upstream, EXOTEL_LIMIT)
        async with serving(door.app()) as url:
            yield door, url


@dataclass(frozen=True)
class Answer:
    client: str
    status: int
    at: float


async def drive(replicas: Sequence[Server], duration_s: float) -> list[Answer]:
    """Every client's callers post calls through every replica until the time is up."""
    answers: list[Answer] = []
    deadline = time.monotonic() + duration_s

    async def caller(http: httpx.AsyncClient, client_index: int, caller_index: int) -> None:
        client = CLIENTS[client_index]
        for n in range(1000):
            if time.monotonic() >= deadline:
                return
            replica = replicas[(caller_index + n) % len(replicas)]
            # 0000 at the end: the simulator completes the call normally.
            to = f"+919{client_index}{caller_index}{n:03d}0000"
            try:
                response = await http.post(
                    f"{replica.url}/calls",
                    json={"from": "+919876543210", "to": to},
                    headers={
                        "Authorization": f"Bearer {secret(client)}",
                        "Idempotency-Key": f"{client}-{caller_index}-{n}",
                    },
                )
            except httpx.TransportError:
                answers.append(Answer(client, 0, time.time()))
                continue
            answers.append(Answer(client, response.status_code, time.time()))
            if response.status_code in (429, 503):
                await asyncio.sleep(REFUSED_PAUSE_S)

    async with httpx.AsyncClient(timeout=30) as http:
        await asyncio.gather(
            *(
                caller(http, client_index, caller_index)
                for client_index in range(len(CLIENTS))
                for caller_index in range(CONCURRENCY)
            )
        )
    return answers


def most_in_any_window(times: Sequence[float], window_s: float) -> int:
    ordered = sorted(times)
    most, first = 0, 0
    for last, at in enumerate(ordered):
        while ordered[first] < at - window_s:
            first += 1
        most = max(most, last - first + 1)
    return most


def nonconforming(times: Sequence[float], budget: Budget, slack: timedelta) -> list[str]:
    """Spans holding more than GCRA allows: burst + floor((span + slack) / interval)."""
    ordered = sorted(times)
    found = []
    for first, start in enumerate(ordered):
        for last in range(first + budget.burst, len(ordered)):
            span = timedelta(seconds=ordered[last] - start)
            if last - first + 1 > budget.most_in(span + slack):
                found.append(f"{last - first + 1} in {span.total_seconds():.2f} s")
    return found


def stored_calls(database_url: str) -> list[tuple[str, float]]:
    """(api client, creation time) of every stored call."""
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT api_client, extract(epoch FROM created_at)::float8 FROM calls"
        ).fetchall()
    return [(client, at) for client, at in rows]


async def test_a_fleet_keeps_exotels_budget_and_every_clients_limit(report: Report) -> None:
    duration_s = 75.0 if full() else 25.0
    server_url, _ = postgres_server(os.environ.get("TEST_DATABASE_URL"))
    name = f"callbridge_fleet_{os.getpid()}"
    database = await asyncio.to_thread(create_database, server_url, name, migrated=True)
    # Calls last 10 to 40 s: the worker looks up those still open after 3 s.
    exotel = simulator("fleet-simulator", speed=2)
    replicas: list[Server] = []
    worker: Worker | None = None
    try:
        await asyncio.to_thread(exotel.start)
        async with front_door(exotel.url) as (door, door_url):
            replicas = [
                callbridge(database, door_url, f"fleet-replica-{index}", SETTINGS)
                for index in range(REPLICAS)
            ]
            for replica in replicas:
                await asyncio.to_thread(replica.start)
            worker_env = callbridge(database, door_url, "fleet-worker", SETTINGS).env
            worker = Worker(
                {**worker_env, "RUN_JOBS": "true"}, LOGS / "fleet-worker.log", free_port()
            )
            worker.launch()
            await worker.ready()

            started = time.time()
            answers = await drive(replicas, duration_s)
            driven_s = time.time() - started
            # Placing has stopped: the worker's lookups, held back while it went on,
            # now take the places it leaves (in the same 60 s windows).
            await asyncio.sleep(SETTLE_S)
            arrivals = list(door.arrivals)
    finally:
        for replica in replicas:
            await asyncio.to_thread(replica.stop)
        if worker is not None:
            await asyncio.to_thread(worker.stop)
        await asyncio.to_thread(exotel.stop)
    calls = await asyncio.to_thread(stored_calls, database)
    await asyncio.to_thread(drop_database, server_url, name)

    problems = check(arrivals, answers, calls, report, driven_s)
    assert not problems, "\n".join(problems)


def check(
    arrivals: list[Arrival],
    answers: list[Answer],
    calls: list[tuple[str, float]],
    report: Report,
    driven_s: float,
) -> list[str]:
    problems: list[str] = []
    exotel_budget = Budget.keeping(EXOTEL_LIMIT, send_slack=EXOTEL_SEND_SLACK)
    client_budget = Budget.keeping(CLIENT_LIMIT, send_slack=CLIENT_SLACK)
    refused = [arrival for arrival in arrivals if arrival.status == 429]
    accepted = [arrival.at for arrival in arrivals if arrival.status != 429]
    by_operation = Counter(arrival.operation for arrival in arrivals)
    busiest = most_in_any_window(accepted, WINDOW_S)
    statuses = Counter(answer.status for answer in answers)
    report.add(
        f"{REPLICAS} replicas + 1 worker, {len(CLIENTS)} clients x {CONCURRENCY} callers, "
        f"driven {driven_s:.0f} s: POST /calls answers {dict(sorted(statuses.items()))}"
    )
    report.add(
        f"requests at Exotel's door: {dict(by_operation)}; 429 answered: {len(refused)}; "
        f"busiest 60 s window: {busiest} (budget {EXOTEL_LIMIT}); "
        f"rate over the run: {len(accepted) / (max(accepted) - min(accepted)) * 60:.0f}/min "
        f"(sustained budget {exotel_budget.per_minute:.0f}/min after a burst of "
        f"{exotel_budget.burst})"
    )
    if refused:
        problems.append(f"Exotel's door answered 429 to {len(refused)} requests")
    if busiest > EXOTEL_LIMIT:
        problems.append(f"a 60 s window held {busiest} requests to Exotel")
    over = nonconforming(accepted, exotel_budget, EXOTEL_SEND_SLACK)
    if over:
        problems.append(f"requests to Exotel beyond the GCRA budget: {over[:5]}")
    if busiest < 0.8 * min(exotel_budget.most_in(timedelta(seconds=driven_s)), EXOTEL_LIMIT):
        problems.append(f"the fleet used only {busiest} of its budget: was it driven hard?")

    connects = Counter(
        call_id_of(arrival.status_callback)
        for arrival in arrivals
        if arrival.operation == "connect" and arrival.status != 429
    )
    twice = [call_id for call_id, sent in connects.items() if sent > 1]
    report.add(f"calls sent to Exotel: {len(connects)}; sent more than once: {len(twice)}")
    if twice:
        problems.append(f"calls sent to Exotel more than once: {twice[:5]}")

    for client in CLIENTS:
        accepted_at = [at for owner, at in calls if owner == client]
        most = most_in_any_window(accepted_at, WINDOW_S)
        refused_here = sum(1 for a in answers if a.client == client and a.status == 429)
        report.add(
            f"client {client}: {len(accepted_at)} calls accepted, busiest 60 s: {most} "
            f"(limit {CLIENT_LIMIT}), 429 answered: {refused_here}"
        )
        if most > CLIENT_LIMIT:
            problems.append(f"client {client} got {most} calls accepted in 60 s")
        over = nonconforming(accepted_at, client_budget, CLIENT_SLACK)
        if over:
            problems.append(f"client {client} beyond its budget: {over[:5]}")
        if not refused_here:
            problems.append(f"client {client} never met its limit: was it driven hard?")
    return problems
