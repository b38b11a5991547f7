"""The relay: tells a call's notify_url what happened, signed the Standard Webhooks way.

`store.save_applied` writes a `call.finished` row in `notifications` (the outbox) in
the transaction that finishes a call with a notify_url; the details job
(app/jobs/details.py) writes a `call.updated` row when the figures Exotel fills in
after the end arrive. The relay polls for due rows every NOTIFY_POLL_INTERVAL_S and
POSTs `{"type": <the row's event type>, "timestamp", "data"}`, `data` being the call
resource as it is at delivery, with the `webhook-id` (the row's id, the same on every
attempt), `webhook-timestamp` and `webhook-signature` headers.

Replicas share the outbox: rows are claimed with FOR UPDATE SKIP LOCKED, and a claim
moves `next_attempt_at` past the attempt's time limit (a lease) and counts the attempt,
which fences the outcome: only the claimer records it. A process that dies mid-attempt
leaves the row to be tried again when the lease ends, seconds later: delivery is at
least once, and a receiver may see a `webhook-id` twice (Standard Webhooks receivers
deduplicate by it).

After failed attempt n (non-2xx, timeout, no connection), the next waits a random time
between half and all of NOTIFY_FIRST_RETRY_S * 2**(n-1), capped at an hour; the first
failure NOTIFY_GIVE_UP_S or more after the notification was queued marks it `dead`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx
import structlog
from sqlalchemy import ColumnElement, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from standardwebhooks import Webhook

from app.calls import store
from app.calls.models import Notification
from app.calls.service import CallService
from app.config import Settings
from app.metrics import RELAY_FAILURES
from app.notify_targets import RefusedAddress

log = structlog.get_logger(__name__)

BATCH = 50
MAX_BACKOFF_S = 3600.0
# An attempt's POST ends within NOTIFY_TIMEOUT_S (asyncio.timeout bounds it whole); this
# is the time to record its outcome after that. Longer only delays the retry of an
# attempt whose process died.
LEASE_MARGIN = timedelta(seconds=5)
# What is read of a receiver's answer at most, so that a huge one costs nothing; a
# short answer read whole lets its connection be used again.
ANSWER_BYTES = 4096
# After an error of our own (the database is away, say), before polling again.
ERROR_PAUSE_S = 5.0

# Retry spacing only has to be spread out, not unpredictable.
_jitter = random.Random()  # noqa: S311


@dataclass(frozen=True)
class _Claimed:
    id: str
    call_id: uuid.UUID
    event_type: str
    url: str
    attempt: int
    queued_at: datetime
    # None if the call could not be read or rendered.
    body: str | None


class Relay:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        http: httpx.AsyncClient,
        secret: str,
        settings: Settings,
    ) -> None:
        self._sessions = sessions
        self._http = http
        self._webhook = Webhook(secret)
        self._poll_interval_s = settings.notify_poll_interval_s
        self._timeout_s = settings.notify_timeout_s
        self._first_retry_s = settings.notify_first_retry_s
        self._give_up = timedelta(seconds=settings.notify_give_up_s)

    async def run(self, stopping: asyncio.Event) -> None:
        """Deliver what is due, then poll again, until `stopping` is set."""
        while not stopping.is_set():
            pause_s = self._poll_interval_s
            try:
                if await self.deliver_due() == BATCH:
                    continue
            except Exception:
                log.exception("relay_run_failed")
                pause_s = max(pause_s, ERROR_PAUSE_S)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(pause_s):
                    await stopping.wait()

    async def deliver_due(self) -> int:
        """Claim up to BATCH due notifications and attempt them at once; return how many."""
        claimed = await self._claim()
        await asyncio.gather(*(self._attempt(item) for item in claimed))
        return len(claimed)

    async def _claim(self) -> list[_Claimed]:
        async with self._sessions() as session, session.begin():
            query = (
                select(Notification)
                .where(Notification.status == "pending", Notification.next_attempt_at <= func.now())
                .order_by(Notification.next_attempt_at)
                .limit(BATCH)
                .with_for_update(skip_locked=True)
            )
            rows = (await session.scalars(query)).all()
            if not rows:
                return []
            lease_end = datetime.now(UTC) + timedelta(seconds=self._timeout_s) + LEASE_MARGIN
            for row in rows:
                row.attempts += 1
                row.next_attempt_at = lease_end
            await session.flush()
            resources = await _resources(session, [row.call_id for row in rows])
        return [
            _Claimed(
                id=row.id,
                call_id=row.call_id,
                event_type=row.event_type,
                url=row.url,
                attempt=row.attempts,
                queued_at=row.created_at,
                body=_body(row.event_type, row.created_at, resources[row.call_id])
                if row.call_id in resources
                else None,
            )
            for row in rows
        ]

    async def _attempt(self, item: _Claimed) -> None:
        if item.body is None:
            # Counted as a failed attempt: retried (the row may be mended), then dead.
            await self._record(item, "unreadable call")
            return
        try:
            error = await self._post(item, item.body)
        except asyncio.CancelledError:
            await asyncio.shield(self._release(item))
            raise
        await self._record(item, error)

    async def _post(self, item: _Claimed, body: str) -> str | None:
        """POST the notification once; None if the receiver took it, else why not."""
        now = datetime.now(UTC)
        headers = {
            "content-type": "application/json",
            "webhook-id": item.id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": self._webhook.sign(item.id, now, body),
        }
        try:
            # httpx's timeout bounds each read or write; this bounds the whole attempt.
            async with asyncio.timeout(self._timeout_s):
                return await self._send(item.url, body, headers)
        except (TimeoutError, httpx.TimeoutException):
            return "Timed out"
        except RefusedAddress:
            return "refused: private address"
        # Whatever failed, the attempt counts, so even a URL that can never work ends dead.
        # Only a category is kept: the text may quote the URL and its secrets, and finer
        # detail would make `notify.last_error` a port scanner.
        except httpx.ConnectError:
            return "connect error"
        except httpx.TransportError:
            return "connection lost"
        except Exception:
            return "error"

    async def _send(self, url: str, body: str, headers: dict[str, str]) -> str | None:
        """POST, and read at most ANSWER_BYTES of the answer: its status is all we need."""
        async with self._http.stream("POST", url, content=body, headers=headers) as response:
            # Raw bytes, undecoded: a small gzip answer must not inflate either. Leaving
            # the block early closes the connection instead of draining the rest.
            read = 0
            async for chunk in response.aiter_raw():
                read += len(chunk)
                if read >= ANSWER_BYTES:
                    break
        return None if response.is_success else f"HTTP {response.status_code}"

    async def _record(self, item: _Claimed, error: str | None) -> None:
        now = datetime.now(UTC)
        context = {
            "call_id": str(item.call_id),
            "event_type": item.event_type,
            "webhook_id": item.id,
            "attempt": item.attempt,
        }
        if error is None:
            outcome = "delivered"
            values: dict[str, object] = {"status": "delivered", "delivered_at": now}
        elif now - item.queued_at >= self._give_up:
            outcome = "dead"
            values = {"status": "dead", "last_error": error}
        else:
            outcome = "retry"
            retry_in_s = self._retry_in_s(item.attempt)
            values = {"last_error": error, "next_attempt_at": now + timedelta(seconds=retry_in_s)}
            context["retry_in_s"] = round(retry_in_s, 1)
        async with self._sessions() as session, session.begin():
            recorded = await session.scalar(
                update(Notification)
                .where(*_still_ours(item))
                .values(**values)
                .returning(Notification.id)
            )
        if error is not None:
            RELAY_FAILURES.inc()
        if recorded is None:
            # Our lease ran out and another process took the notification over.
            log.warning("notification_outcome_dropped", outcome=outcome, **context)
        elif outcome == "delivered":
            log.info("notification_delivered", **context)
        elif outcome == "dead":
            log.error("notification_dead", error=error, **context)
        else:
            log.warning("notification_failed", error=error, **context)

    async def _release(self, item: _Claimed) -> None:
        """Hand an interrupted attempt back, to be made again at once by any process."""
        async with self._sessions() as session, session.begin():
            await session.execute(
                update(Notification)
                .where(*_still_ours(item))
                .values(next_attempt_at=func.now(), attempts=item.attempt - 1)
            )

    def _retry_in_s(self, attempt: int) -> float:
        ceiling = min(self._first_retry_s * 2 ** min(attempt - 1, 32), MAX_BACKOFF_S)
        return _jitter.uniform(ceiling / 2, ceiling)


async def _resources(
    session: AsyncSession, call_ids: list[uuid.UUID]
) -> dict[uuid.UUID, dict[str, object]]:
    """The calls as resources, in one statement; should a row fail to be read or
    rendered, one call at a time, leaving that one out: it must not hold up the others."""

    async def read(ids: list[uuid.UUID]) -> dict[uuid.UUID, dict[str, object]]:
        async with session.begin_nested():
            found = await session.execute(store.call_query().where(store.calls.c.id.in_(ids)))
            return {row.id: CallService.resource(store.state_from_row(row)) for row in found}

    try:
        return await read(call_ids)
    except Exception:
        log.exception("notification_calls_unreadable", calls=len(call_ids))
    resources: dict[uuid.UUID, dict[str, object]] = {}
    for call_id in call_ids:
        try:
            resources |= await read([call_id])
        except Exception:
            log.exception("notification_call_unreadable", call_id=str(call_id))
    return resources


def _still_ours(item: _Claimed) -> tuple[ColumnElement[bool], ...]:
    return (
        Notification.id == item.id,
        Notification.attempts == item.attempt,
        Notification.status == "pending",
    )


def _body(event_type: str, queued_at: datetime, resource: dict[str, object]) -> str:
    timestamp = queued_at.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return json.dumps({"type": event_type, "timestamp": timestamp, "data": resource})
