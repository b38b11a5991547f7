"""The application: create_app() and its lifespan, where everything with state is built."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import timedelta

import structlog
from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute
from fastapi_offline import FastAPIOffline
from sqlalchemy.ext.asyncio import AsyncEngine

from app.auth import ApiKeys
from app.callbacks.applier import running_applier
from app.callbacks.router import CALLBACK_PATH, exotel_callback
from app.callbacks.router import OPENAPI as CALLBACK_OPENAPI
from app.callbacks.service import CallbackInbox
from app.calls.router import get_call, place_call
from app.calls.router import router as calls_router
from app.calls.service import CallService
from app.calls.tokens import CallbackTokens
from app.claims import SessionClaims
from app.config import (
    CONFIG_ERROR_EXIT,
    ConfigError,
    Settings,
    get_settings,
    report_config_error,
)
from app.db import (
    ConnectionPool,
    create_engine,
    create_sessionmaker,
    migrate,
    wait_for_database,
)
from app.embedded import EmbeddedPostgres
from app.errors import install_error_handlers
from app.exotel.client import ExotelClient, build_http_client
from app.jobs.runner import running_jobs
from app.limits.gcra import FleetLimiter, client_limiter, exotel_limiter
from app.logs import configure_logging
from app.middleware import (
    MAX_BODY_BYTES,
    BodyLimitsMiddleware,
    HotRoute,
    HotRoutes,
    RequestLogMiddleware,
)
from app.openapi import install_openapi
from app.ops.router import router as ops_router
from app.ops.service import OpsService

log = structlog.get_logger(__name__)

SIMULATOR_PREFIX = "/simulator"
API_DESCRIPTION = """\
Internal services place calls with `POST /calls`; dashboards read them back.

- **Auth:** `Authorization: Bearer <key>`, a key from `API_KEYS` with role `write` or `read`.
- **Errors** are `application/problem+json` (RFC 9457): match on `type`, show `detail`.
- **Request ids:** every answer carries `X-Request-ID` (yours, if you sent a sane one); the
  same id is on every log line written for the request.
- **Limits:** `POST /calls` is limited per API key (429 with `Retry-After`); request bodies
  are capped at 64 KiB (413).
"""


async def _database_url(settings: Settings, stack: AsyncExitStack) -> str:
    if settings.database_url:
        return settings.database_url
    # Simulator mode only (live mode requires DATABASE_URL). Stopped when the lifespan
    # ends, however it ends: SIGTERM, SIGINT, or a failure later in startup.
    embedded = EmbeddedPostgres(settings.callbridge_data_dir)
    url = await asyncio.to_thread(embedded.start)
    stack.push_async_callback(asyncio.to_thread, embedded.stop)
    return url


def _settings_or_exit(app: FastAPI) -> Settings:
    """The app's settings; from the environment when served as `uvicorn app.main:app`, where
    unusable settings end the process with CONFIG_ERROR_EXIT, as `callbridge serve` does."""
    if app.state.settings is not None:
        settings: Settings = app.state.settings
        return settings
    try:
        return get_settings()
    except ConfigError as error:
        report_config_error(error)
        # uvicorn turns any startup failure into exit status 3 after a traceback; nothing
        # has started yet, so there is nothing to clean up.
        logging.shutdown()
        os._exit(CONFIG_ERROR_EXIT)


async def _exotel_client(
    app: FastAPI,
    settings: Settings,
    stack: AsyncExitStack,
    engine: AsyncEngine,
    pool: ConnectionPool,
) -> tuple[ExotelClient, FleetLimiter]:
    """The Exotel client, and the fleet's limiter on its requests (placing a call takes
    its place through the limiter directly: app/calls/service.py)."""
    if settings.live:
        assert settings.exotel_account_sid is not None
        assert settings.exotel_api_key is not None
        assert settings.exotel_api_token is not None
        http = build_http_client(
            settings.exotel_host,
            api_key=settings.exotel_api_key,
            api_token=settings.exotel_api_token.get_secret_value(),
            timeout_s=settings.exotel_timeout_s,
        )
        stack.push_async_callback(http.aclose)
        limiter = exotel_limiter(
            pool, settings.exotel_account_sid, settings.exotel_requests_per_minute
        )
        exotel = ExotelClient(http, account_sid=settings.exotel_account_sid, limiter=limiter)
        return exotel, limiter

    from app.exotel.simulator import Simulator, SimulatorConfig

    config = SimulatorConfig(api_token=settings.dev_secret("simulator_token"))
    # In the service's database (tables sim_*), so that simulated calls outlive a restart.
    simulator = Simulator(config, database=engine)
    await simulator.start()
    stack.push_async_callback(simulator.aclose)
    app.mount(SIMULATOR_PREFIX, simulator.app)
    http = build_http_client(
        settings.public_base_url + SIMULATOR_PREFIX,
        api_key=config.api_key,
        api_token=config.api_token,
        timeout_s=settings.exotel_timeout_s,
    )
    stack.push_async_callback(http.aclose)
    log.warning(
        "SIMULATOR MODE: calls are simulated and no phone rings",
        simulator_url=settings.public_base_url + SIMULATOR_PREFIX,
    )
    limiter = exotel_limiter(pool, config.account_sid, settings.exotel_requests_per_minute)
    return ExotelClient(http, account_sid=config.account_sid, limiter=limiter), limiter


def _secrets(settings: Settings) -> list[str]:
    """Values the logs must never show, whatever a log call passes them."""
    secrets = [secret for _, secret in settings.api_clients.values()]
    for value in (settings.exotel_api_token, settings.callback_secret, settings.notify_secret):
        if value is not None:
            secrets.append(value.get_secret_value())
    return secrets


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings = _settings_or_exit(app)
    configure_logging(
        json_format=settings.json_logs,
        level=settings.log_level,
        secrets=_secrets(settings),
    )
    async with AsyncExitStack() as stack:
        database_url = await _database_url(settings, stack)
        engine = create_engine(database_url)
        stack.push_async_callback(engine.dispose)
        await wait_for_database(engine, timeout_s=settings.database_wait_s)
        # Pending migrations are applied here too (a no-op once `alembic upgrade head`
        # ran); replicas starting together queue on a lock taken in migrations/env.py.
        await asyncio.to_thread(migrate, database_url)
        sessions = create_sessionmaker(engine)
        app.state.engine = engine
        pool = ConnectionPool(database_url)
        stack.push_async_callback(pool.close)
        app.state.pool = pool

        callback_secret = (
            settings.callback_secret.get_secret_value()
            if settings.callback_secret
            else settings.dev_secret("callback_secret")
        )
        app.state.api_keys = ApiKeys(settings.api_clients)
        if app.state.api_keys.open_access and app.state.serves_http:
            log.warning(
                "OPEN ACCESS: API_KEYS is empty, every request from this machine may place "
                "and read calls"
            )
        app.state.sessions = sessions
        app.state.ops = OpsService(sessions, exports_fleet_gauges=settings.run_jobs)
        app.state.tokens = CallbackTokens(callback_secret)
        app.state.notify_allowed_hosts = settings.notify_allowed_hosts
        exotel, requests_to_exotel = await _exotel_client(app, settings, stack, engine, pool)
        # The applier's own connection: it never queues behind requests for one of theirs.
        applier_engine = create_engine(database_url, pool_size=1)
        stack.push_async_callback(applier_engine.dispose)
        applier = await stack.enter_async_context(
            running_applier(applier_engine, details_after=settings.details_after)
        )
        app.state.callback_inbox = CallbackInbox(pool, applier)
        # This process's claims on the work it does (app/claims.py), on a connection of
        # their own, outside the pools: released together when the process stops, or by
        # Postgres when it dies.
        claims = SessionClaims(engine)
        await claims.start()
        stack.push_async_callback(claims.close)
        app.state.claims = claims
        app.state.calls = CallService(
            engine,
            pool,
            exotel,
            app.state.tokens,
            claims,
            client_limiter(settings.calls_per_minute_per_client),
            requests_to_exotel,
            public_base_url=settings.public_base_url,
            default_caller_id=settings.exotel_caller_id,
            default_country=settings.default_country,
            reconcile_after=timedelta(seconds=settings.reconcile_after_s),
            details_after=settings.details_after,
        )
        # Runs before the engine is disposed: answers from Exotel still being stored.
        stack.push_async_callback(app.state.calls.finish_storing)
        if settings.run_jobs:
            await stack.enter_async_context(running_jobs(settings, sessions, exotel, claims))
        log.info("callbridge_started", live=settings.live)
        # What startup built (modules, models, compiled queries) lives as long as the
        # process: kept out of the collector's way, full collections stay short rather
        # than stopping every request for ~70 ms now and then (bench/README.md).
        gc.freeze()
        try:
            yield
        finally:
            gc.unfreeze()


def create_app(settings: Settings | None = None, *, serves_http: bool = True) -> FastAPI:
    """The application; `serves_http=False` for `callbridge worker`, which runs only the jobs."""
    # Swagger UI and ReDoc from assets served by the app itself (fastapi-offline): /docs
    # works on networks without internet.
    app = FastAPIOffline(
        title="Callbridge",
        summary="Places phone calls through Exotel and keeps them current from its callbacks.",
        description=API_DESCRIPTION,
        version="0.1.0",
        lifespan=lifespan,
        # Callbridge exports its own Prometheus metrics and request log, not OpenTelemetry:
        # off, FastAPI's telemetry no longer looks for a configured provider on every request.
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
    )
    app.state.settings = settings
    app.state.serves_http = serves_http
    install_error_handlers(app)
    install_openapi(app, extra_operations={CALLBACK_PATH: {"post": CALLBACK_OPENAPI}})
    # The last added runs first: the request log sees (and counts) the 413s too, and the
    # hot routes, after them.
    app.add_middleware(
        HotRoutes,
        routes=[
            HotRoute("POST", CALLBACK_PATH, exotel_callback),
            HotRoute("GET", _route_path(calls_router, get_call), get_call),
            HotRoute("POST", _route_path(calls_router, place_call), place_call),
        ],
    )
    app.add_middleware(BodyLimitsMiddleware, max_bytes=MAX_BODY_BYTES)
    app.add_middleware(RequestLogMiddleware)
    app.add_route(CALLBACK_PATH, exotel_callback, methods=["POST"], include_in_schema=False)
    app.include_router(calls_router)
    app.include_router(ops_router)
    return app


def _route_path(router: APIRouter, endpoint: object) -> str:
    """The template `router` routes `endpoint` by, so that its hot route matches the same
    paths."""
    return next(
        route.path
        for route in router.routes
        if isinstance(route, APIRoute) and route.endpoint is endpoint
    )


app = create_app()
