"""The application: create_app() and its lifespan, where everything with state is built."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import structlog
from aiolimiter import AsyncLimiter
from fastapi import FastAPI

from app.auth import ApiKeys
from app.callbacks.router import router as callbacks_router
from app.calls.router import router as calls_router
from app.calls.service import CallService
from app.calls.tokens import CallbackTokens
from app.config import Settings, get_settings
from app.db import create_engine, create_sessionmaker, migrate, start_embedded_postgres
from app.errors import install_error_handlers
from app.exotel.client import ExotelClient, build_http_client
from app.logs import configure_logging

log = structlog.get_logger(__name__)

SIMULATOR_PREFIX = "/simulator"


async def _database_url(settings: Settings) -> str:
    if settings.database_url:
        return settings.database_url
    url = await asyncio.to_thread(start_embedded_postgres, settings.callbridge_data_dir)
    await asyncio.to_thread(migrate, url)
    return url


def _exotel_client(app: FastAPI, settings: Settings, stack: AsyncExitStack) -> ExotelClient:
    limiter = AsyncLimiter(settings.exotel_requests_per_minute, time_period=60)
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
        return ExotelClient(http, account_sid=settings.exotel_account_sid, limiter=limiter)

    from app.exotel.simulator import Simulator, SimulatorConfig

    config = SimulatorConfig(api_token=settings.dev_secret("simulator_token"))
    simulator = Simulator(config)
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
        "SIMULATOR MODE: no Exotel credentials are set, calls are simulated and no phone rings",
        simulator_url=settings.public_base_url + SIMULATOR_PREFIX,
    )
    return ExotelClient(http, account_sid=config.account_sid, limiter=limiter)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings or get_settings()
    configure_logging(json_format=settings.log_format == "json", level=settings.log_level)
    async with AsyncExitStack() as stack:
        engine = create_engine(await _database_url(settings))
        stack.push_async_callback(engine.dispose)
        sessions = create_sessionmaker(engine)

        callback_secret = (
            settings.callback_secret.get_secret_value()
            if settings.callback_secret
            else settings.dev_secret("callback_secret")
        )
        app.state.api_keys = ApiKeys(settings.api_clients)
        if app.state.api_keys.open_access:
            log.warning("OPEN ACCESS: API_KEYS is empty, every request may place and read calls")
        app.state.sessions = sessions
        app.state.tokens = CallbackTokens(callback_secret)
        app.state.calls = CallService(
            sessions,
            _exotel_client(app, settings, stack),
            app.state.tokens,
            public_base_url=settings.public_base_url,
            default_caller_id=settings.exotel_caller_id,
            default_country=settings.default_country,
        )
        log.info("callbridge_started", live=settings.live)
        yield


def create_app(settings: Settings | None = None) -> FastAPI:
    app = FastAPI(
        title="Callbridge",
        summary="Places phone calls through Exotel and keeps them current from its callbacks.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    install_error_handlers(app)
    app.include_router(calls_router)
    app.include_router(callbacks_router)
    return app


app = create_app()
