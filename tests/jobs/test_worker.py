"""`callbridge worker` processes share the outbox: every notification is delivered once."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.calls.models import Call, Leg, Notification
from app.db import PROJECT_ROOT, create_engine, create_sessionmaker
from bench.servers import free_port
from tests.conftest import CALLBACK_SECRET, EXOTEL_ACCOUNT, WRITER_KEY
from tests.jobs.conftest import NOTIFY_SECRET, Receiver, eventually

CALLS = 200
PROBE_PORTS = (free_port(), free_port())


def worker_environment(database_url: str, data_dir: Path) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": database_url,
        "CALLBRIDGE_DATA_DIR": str(data_dir),
        "EXOTEL_ACCOUNT_SID": EXOTEL_ACCOUNT,
        "EXOTEL_API_KEY": "exotel-key",
        "EXOTEL_API_TOKEN": "exotel-token",
        # Nothing is due for reconciling; were anything asked, it would find nobody there.
        "EXOTEL_BASE_URL": "http://127.0.0.1:9",
        "EXOTEL_CALLER_ID": "08047112233",
        "PUBLIC_BASE_URL": "http://127.0.0.1:9",
        "CALLBACK_SECRET": CALLBACK_SECRET,
        "API_KEYS": f"orders:{WRITER_KEY}:write",
        "NOTIFY_SECRET": NOTIFY_SECRET,
        "NOTIFY_POLL_INTERVAL_S": "0.05",
        # The receiver listens on loopback, which notify URLs may not reach unless allowed.
        "NOTIFY_ALLOWED_HOSTS": "127.0.0.1",
        "LOG_FORMAT": "json",
    }


@pytest.fixture
def workers(
    database_url: str, tmp_path: Path
) -> Iterator[list[tuple[subprocess.Popen[bytes], Path]]]:
    started = []
    for index, port in enumerate(PROBE_PORTS):
        log_path = tmp_path / f"worker-{index}.log"
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(
                [sys.executable, "-m", "app.cli", "worker"],
                cwd=PROJECT_ROOT,
                # Each worker's probes and metrics on a port of its own.
                env={**worker_environment(database_url, tmp_path), "WORKER_PORT": str(port)},
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        started.append((process, log_path))
    yield started
    for process, _ in started:
        if process.poll() is None:
            process.kill()
            process.wait()


async def query(database_url: str, sql: str) -> list[tuple[object, ...]]:
    url = database_url.replace("postgresql+psycopg://", "postgresql://")
    async with await psycopg.AsyncConnection.connect(url) as conn:
        return await (await conn.execute(sql)).fetchall()


def log_events(path: Path) -> list[dict[str, object]]:
    events = []
    for line in path.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return events


def has_logged(path: Path, event: str) -> bool:
    return any(entry.get("event") == event for entry in log_events(path))


async def finish_calls(database_url: str, url: str) -> set[str]:
    """CALLS finished calls, each with its notification, committed at once."""
    engine = create_engine(database_url)
    try:
        async with create_sessionmaker(engine)() as session, session.begin():
            ids = set()
            for index in range(CALLS):
                call = Call(
                    status="completed",
                    sid=f"race-{index}",
                    from_number="+919876543210",
                    to_number="+919123456789",
                    caller_id="+918047112233",
                    api_client="orders",
                    notify_url=url,
                )
                session.add(call)
                await session.flush()
                session.add_all([Leg(call_id=call.id, leg=0), Leg(call_id=call.id, leg=1)])
                notification = Notification(id=f"msg_race_{index}", call_id=call.id, url=url)
                session.add(notification)
                ids.add(notification.id)
    finally:
        await engine.dispose()
    return ids


async def test_two_worker_processes_deliver_each_notification_once(
    database_url: str,
    receiver: Receiver,
    workers: list[tuple[subprocess.Popen[bytes], Path]],
) -> None:
    receiver.delay_s = 0.05  # keeps each batch in flight long enough for the other to look

    async def both_started() -> bool:
        return all(has_logged(path, "worker_started") for _, path in workers)

    await eventually(both_started, timeout_s=30)
    webhook_ids = await finish_calls(database_url, receiver.url)

    async def all_delivered() -> bool:
        delivered = await query(
            database_url, "SELECT count(*) FROM notifications WHERE status = 'delivered'"
        )
        return delivered == [(CALLS,)]

    await eventually(all_delivered, timeout_s=30)
    await asyncio.sleep(0.3)  # room for a wrong second delivery to arrive

    deliveries = Counter(delivery.headers["webhook-id"] for delivery in receiver.deliveries)
    assert set(deliveries) == webhook_ids
    assert set(deliveries.values()) == {1}
    for process, path in workers:
        process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(process.wait, 15) == 0
        delivered_here = sum(
            entry.get("event") == "notification_delivered" for entry in log_events(path)
        )
        assert delivered_here > 0, "both workers took part in the race"
        assert has_logged(path, "worker_stopped")
    assert await query(database_url, "SELECT DISTINCT attempts FROM notifications") == [(1,)]


async def test_a_worker_serves_its_probes_and_metrics_on_its_own_port(
    workers: list[tuple[subprocess.Popen[bytes], Path]],
) -> None:
    _, path = workers[0]
    port = PROBE_PORTS[0]

    async def listening() -> bool:
        # uvicorn's own line: "worker_started" may come just before its socket is bound.
        return any(
            str(entry.get("event", "")).startswith("Uvicorn running on")
            for entry in log_events(path)
        )

    await eventually(listening, timeout_s=30)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
        health = await http.get("/healthz")
        ready = await http.get("/readyz")
        scraped = await http.get("/metrics")

    assert health.json() == {"status": "ok"}
    assert ready.status_code == 200
    families = {family.name for family in text_string_to_metric_families(scraped.text)}
    # Its own counters (lookups, deliveries), and the fleet-wide gauges: exported here.
    assert {
        "callbridge_exotel_requests",
        "callbridge_relay_failures",
        "callbridge_reconcile_backlog",
        "callbridge_relay_queue_depth",
    } <= families
