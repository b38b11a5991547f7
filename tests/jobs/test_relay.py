"""The relay tells a call's notify_url, once, signed, that the call finished."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import respx
from sqlalchemy import func, select
from standardwebhooks import Webhook

from app.calls import store
from app.calls.apply import apply_update
from app.calls.models import Notification
from app.config import Settings
from app.exotel.schemas import CallUpdate
from app.jobs.runner import notify_secret
from tests.conftest import make_settings
from tests.exotel_samples import connect_answer
from tests.jobs.conftest import NOTIFY_SECRET, AppFactory, Receiver, RunningApp, eventually

FINISHED = CallUpdate(status="completed", date_updated=datetime(2026, 1, 5, 10, 0, tzinfo=UTC))


async def place(running: RunningApp, exotel: respx.MockRouter, notify_url: str) -> str:
    sid = uuid.uuid4().hex
    exotel.post("/connect.json").respond(200, json=connect_answer(sid))
    response = await running.client.post(
        "/calls", json={"from": "+919876543210", "to": "09123456789", "notify_url": notify_url}
    )
    assert response.status_code == 201
    assert response.json()["notify"] is None
    call_id: str = response.json()["id"]
    return call_id


async def apply(running: RunningApp, call_id: str, update: CallUpdate) -> None:
    """What a status callback does to the call (and the reconciler, through the same path)."""
    async with running.app.state.engine.begin() as conn:
        [call] = (await store.lock(conn, [uuid.UUID(call_id)])).values()
        await store.save_applied(
            conn, [(call, apply_update(call, update))], details_after=timedelta(seconds=180)
        )


async def notify_state(running: RunningApp, call_id: str) -> dict[str, Any] | None:
    state: dict[str, Any] | None = (await running.client.get(f"/calls/{call_id}")).json()["notify"]
    return state


def verified(delivery: Any) -> dict[str, Any]:
    payload: dict[str, Any] = Webhook(NOTIFY_SECRET).verify(delivery.body, delivery.headers)
    return payload


async def test_a_failed_delivery_is_retried_with_the_same_webhook_id(
    start_app: AppFactory, exotel: respx.MockRouter, receiver: Receiver
) -> None:
    running = await start_app(notify_poll_interval_s=0.5)  # the default
    receiver.answers = [500]
    call_id = await place(running, exotel, receiver.url)

    finished_at = time.monotonic()
    await apply(running, call_id, FINISHED)

    async def delivered() -> bool:
        return (await notify_state(running, call_id) or {}).get("status") == "delivered"

    await eventually(delivered)
    first, second = receiver.deliveries
    assert first.received_at - finished_at < 2.0
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    assert first.headers["webhook-id"].startswith("msg_")
    payload = verified(second)
    assert verified(first)["data"]["id"] == payload["data"]["id"] == call_id
    assert payload["type"] == "call.finished"
    assert datetime.fromisoformat(payload["timestamp"]).tzinfo is not None
    assert payload["data"]["status"] == "completed"
    assert payload["data"]["from"] == "+919876543210"
    assert await notify_state(running, call_id) == {
        "status": "delivered",
        "attempts": 2,
        "last_error": "HTTP 500",
    }


async def test_duplicate_terminal_updates_make_one_notification(
    start_app: AppFactory, exotel: respx.MockRouter, receiver: Receiver
) -> None:
    running = await start_app()
    call_id = await place(running, exotel, receiver.url)

    for update in (FINISHED, FINISHED, CallUpdate(status="in-progress"), FINISHED):
        await apply(running, call_id, update)

    async def delivered() -> bool:
        return (await notify_state(running, call_id) or {}).get("status") == "delivered"

    await eventually(delivered)
    await eventually_quiet(receiver)
    assert len(receiver.deliveries) == 1
    async with running.app.state.sessions() as session:
        count = select(func.count()).select_from(Notification)
        assert await session.scalar(count) == 1


async def eventually_quiet(receiver: Receiver, quiet_s: float = 0.3) -> None:
    """Give a wrong second delivery the time to arrive."""
    seen = len(receiver.deliveries)
    deadline = time.monotonic() + quiet_s
    while time.monotonic() < deadline:
        assert len(receiver.deliveries) == seen
        await asyncio.sleep(0.02)


async def test_a_call_without_notify_url_makes_no_notification(
    start_app: AppFactory, exotel: respx.MockRouter
) -> None:
    running = await start_app()
    sid = uuid.uuid4().hex
    exotel.post("/connect.json").respond(200, json=connect_answer(sid))
    placed = await running.client.post(
        "/calls", json={"from": "+919876543210", "to": "09123456789"}
    )

    await apply(running, placed.json()["id"], FINISHED)

    assert await notify_state(running, placed.json()["id"]) is None


async def test_a_receiver_that_never_answers_in_time_ends_dead(
    start_app: AppFactory, exotel: respx.MockRouter, receiver: Receiver
) -> None:
    running = await start_app(notify_timeout_s=0.2, notify_give_up_s=1.0)
    receiver.delay_s = 1.0
    call_id = await place(running, exotel, receiver.url)

    await apply(running, call_id, FINISHED)

    async def dead() -> bool:
        return (await notify_state(running, call_id) or {}).get("status") == "dead"

    await eventually(dead)
    state = await notify_state(running, call_id)
    assert state is not None
    assert state["last_error"] == "Timed out"
    assert state["attempts"] == len(receiver.deliveries) >= 2
    await eventually_quiet(receiver)


async def test_an_attempt_holds_its_notification_only_for_its_own_time_limit(
    start_app: AppFactory, exotel: respx.MockRouter, receiver: Receiver
) -> None:
    # Were the process to die mid-attempt, another would retry as soon as the lease ends.
    running = await start_app(notify_timeout_s=2)
    receiver.delay_s = 1.0
    call_id = await place(running, exotel, receiver.url)

    await apply(running, call_id, FINISHED)

    async def leased() -> bool:
        return (await notify_state(running, call_id) or {}).get("attempts") == 1

    await eventually(leased)
    async with running.app.state.sessions() as session:
        lease_left = await session.scalar(
            select(Notification.next_attempt_at - func.now()).where(
                Notification.call_id == uuid.UUID(call_id)
            )
        )
    assert lease_left is not None
    # The attempt's 2 s, and a few to record its outcome: not half a minute.
    assert 2 <= lease_left.total_seconds() <= 7


def test_in_simulator_mode_without_notify_secret_a_development_key_is_generated_and_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    settings: Settings = make_settings(
        "postgresql://unused/db",
        notify_secret=None,
        callbridge_data_dir=tmp_path,
        callbridge_simulator=True,
        exotel_account_sid=None,
        exotel_api_key=None,
        exotel_api_token=None,
    )

    secret = notify_secret(settings)

    assert secret.startswith("whsec_")
    assert notify_secret(settings) == secret
    signed = Webhook(secret).sign("msg_1", datetime.now(UTC), json.dumps({}))
    assert signed.startswith("v1,")
    assert (tmp_path / "secrets" / "notify_secret").read_text() == secret
    assert secret not in caplog.text + capsys.readouterr().err
