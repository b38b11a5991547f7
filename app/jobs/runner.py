"""Starts and stops the background jobs: in the API process, or alone in `callbridge worker`."""

from __future__ import annotations

import asyncio
import base64
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.claims import SessionClaims
from app.config import Settings
from app.exotel.client import ExotelClient
from app.jobs.details import DetailsJob
from app.jobs.reconciler import Reconciler
from app.jobs.relay import Relay
from app.notify_targets import PublicOnlyTransport

log = structlog.get_logger(__name__)

# What shutdown waits for claimed work to finish before it interrupts (and releases) it.
SHUTDOWN_GRACE_S = 10.0


def _new_webhook_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def notify_secret(settings: Settings) -> str:
    """NOTIFY_SECRET, or a development secret generated once and kept in the data directory."""
    if settings.notify_secret is not None:
        return settings.notify_secret.get_secret_value()
    log.warning(
        "NOTIFY_SECRET is not set: notifications are signed with a generated development "
        "key, kept in the data directory; set NOTIFY_SECRET to share one with receivers",
        data_dir=str(settings.callbridge_data_dir),
    )
    return settings.dev_secret("notify_secret", generate=_new_webhook_secret)


@asynccontextmanager
async def running_jobs(
    settings: Settings,
    sessions: async_sessionmaker[AsyncSession],
    exotel: ExotelClient,
    claims: SessionClaims,
) -> AsyncIterator[None]:
    """Run the reconciler, the details job and the relay while the context is open."""
    async with httpx.AsyncClient(
        timeout=settings.notify_timeout_s,
        headers={"User-Agent": "callbridge"},
        # Connects to public addresses only, checked after each DNS lookup (notify_targets).
        transport=PublicOnlyTransport(settings.notify_allowed_hosts),
    ) as http:
        reconciler = Reconciler(sessions, exotel, settings, claims)
        details = DetailsJob(sessions, exotel, settings)
        relay = Relay(sessions, http, notify_secret(settings), settings)
        stopping = asyncio.Event()
        tasks = [
            asyncio.create_task(reconciler.run(stopping), name="reconciler"),
            asyncio.create_task(details.run(stopping), name="details"),
            asyncio.create_task(relay.run(stopping), name="relay"),
        ]
        log.info("jobs_started")
        try:
            yield
        finally:
            stopping.set()
            _, unfinished = await asyncio.wait(tasks, timeout=SHUTDOWN_GRACE_S)
            for task in unfinished:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            log.info("jobs_stopped", interrupted=[task.get_name() for task in unfinished])
