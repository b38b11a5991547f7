"""`callbridge worker`: the background jobs alone, to run them apart from the API.

A worker is the service without its API: it goes through the same lifespan, so it
builds its engine, Exotel client and jobs from the settings exactly as the API process
does. Run the API processes with RUN_JOBS=false beside it; any number of workers and
replicas share the work and the Exotel budget through Postgres.

It serves its own probes and metrics on WORKER_PORT (`--port`, default 9100):
`/healthz`, `/readyz` and `/metrics`, whose counters are this worker's lookups and
deliveries, and whose fleet-wide gauges (queues, backlogs) it exports (app/metrics.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Iterator

import structlog
import uvicorn
from fastapi import FastAPI

from app.config import Settings
from app.errors import install_error_handlers
from app.main import create_app
from app.ops.router import router as ops_router
from app.ops.service import OpsService

log = structlog.get_logger(__name__)


class _ProbeServer(uvicorn.Server):
    """uvicorn for the probes alone: the worker, not uvicorn, handles the stop signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def probe_app(ops: OpsService) -> FastAPI:
    """The operations routes alone, answering from the running service's OpsService."""
    probes = FastAPI(title="Callbridge worker", openapi_url=None, docs_url=None, redoc_url=None)
    install_error_handlers(probes)
    probes.include_router(ops_router)
    probes.state.ops = ops
    return probes


async def run_worker(settings: Settings, *, host: str = "127.0.0.1") -> None:
    app = create_app(settings.model_copy(update={"run_jobs": True}), serves_http=False)
    async with app.router.lifespan_context(app):
        config = uvicorn.Config(
            probe_app(app.state.ops),
            host=host,
            port=settings.worker_port,
            lifespan="off",
            access_log=False,
            log_config=None,
        )
        server = _ProbeServer(config)
        # If the port is taken, uvicorn logs why and exits the process with status 1.
        serving = asyncio.create_task(server.serve(), name="probes")
        log.info("worker_started", host=host, port=settings.worker_port)
        try:
            await _until_stopped()
        finally:
            server.should_exit = True
            await serving
    log.info("worker_stopped")


async def _until_stopped() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for stop_signal in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(stop_signal, stop.set)
    await stop.wait()
