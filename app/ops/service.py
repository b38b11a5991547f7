"""What the operations endpoints ask the database: is it there, and how far behind are the jobs."""

from __future__ import annotations

import asyncio

import structlog
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.calls.models import Call, CallEvent, Notification
from app.errors import DATABASE_DOWN_ERRORS, database_unavailable
from app.metrics import CALLBACK_BACKLOG, RECONCILE_BACKLOG, RELAY_QUEUE_DEPTH

log = structlog.get_logger(__name__)

# Probes and scrapes time out within seconds; an answer later than this is no answer.
READY_TIMEOUT_S = 2.0
GAUGES_TIMEOUT_S = 1.0


class OpsService:
    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], *, exports_fleet_gauges: bool
    ) -> None:
        self._sessions = sessions
        # Gauges counted from the database are the same from every process: only the
        # processes running the jobs export them (app/metrics.py).
        self.exports_fleet_gauges = exports_fleet_gauges

    async def check_database(self) -> None:
        """Return if the database answers `SELECT 1` in time; else raise a 503 Problem."""
        try:
            async with asyncio.timeout(READY_TIMEOUT_S), self._sessions() as session:
                await session.execute(text("SELECT 1"))
        except (TimeoutError, *DATABASE_DOWN_ERRORS) as exc:
            log.warning("database_not_ready", error=type(exc).__name__)
            raise database_unavailable() from exc

    async def refresh_gauges(self) -> None:
        """Count the relay queue and the jobs' backlogs (each reads a partial index)."""
        relay_queue = select(func.count()).where(Notification.status == "pending")
        backlog = select(func.count()).where(Call.next_reconcile_at <= func.now())
        callbacks = select(func.count()).where(CallEvent.processed_at.is_(None))
        try:
            async with asyncio.timeout(GAUGES_TIMEOUT_S), self._sessions() as session:
                RELAY_QUEUE_DEPTH.set(await session.scalar(relay_queue) or 0)
                RECONCILE_BACKLOG.set(await session.scalar(backlog) or 0)
                CALLBACK_BACKLOG.set(await session.scalar(callbacks) or 0)
        except (TimeoutError, *DATABASE_DOWN_ERRORS) as exc:
            # Unknown, not stale: a last value would look current on a dashboard.
            RELAY_QUEUE_DEPTH.set(float("nan"))
            RECONCILE_BACKLOG.set(float("nan"))
            CALLBACK_BACKLOG.set(float("nan"))
            log.warning("gauges_not_refreshed", error=type(exc).__name__)
