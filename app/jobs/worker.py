"""`callbridge worker`: the background jobs alone, to run them apart from the API.

A worker is the service without its HTTP server: it goes through the same lifespan,
so it builds its engine, Exotel client and jobs from the settings exactly as the API
process does. Run the API processes with RUN_JOBS=false beside it. Each process has
its own Exotel rate limiter, so EXOTEL_REQUESTS_PER_MINUTE is per process.
"""

from __future__ import annotations

import asyncio
import signal

import structlog

from app.config import Settings
from app.main import create_app

log = structlog.get_logger(__name__)


async def run_worker(settings: Settings) -> None:
    app = create_app(settings.model_copy(update={"run_jobs": True}), serves_http=False)
    async with app.router.lifespan_context(app):
        log.info("worker_started")
        await _until_stopped()
    log.info("worker_stopped")


async def _until_stopped() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for stop_signal in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(stop_signal, stop.set)
    await stop.wait()
