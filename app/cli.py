"""`callbridge` command: serve the API, run the Exotel simulator alone, or run background jobs."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import os
import sys
from typing import Any

import uvicorn

from app.config import (
    CONFIG_ERROR_EXIT,
    ConfigError,
    Settings,
    load_settings,
    report_config_error,
)

# How `serve` runs uvicorn (tests/ops/test_shutdown.py serves with the same options).
SERVER_OPTIONS: dict[str, Any] = {
    # Our request log replaces uvicorn's, which would print query strings: callback tokens.
    "access_log": False,
    "log_config": None,
    "proxy_headers": True,
    # On SIGTERM, requests in flight get this long to finish (compose allows 30 s).
    "timeout_graceful_shutdown": 20,
}


def _settings_or_exit() -> Settings:
    try:
        return load_settings()
    except ConfigError as error:
        report_config_error(error)
        sys.exit(CONFIG_ERROR_EXIT)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="callbridge", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve the HTTP API (and, by default, the jobs)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1)
    serve.add_argument(
        "--simulator",
        action="store_true",
        help="simulate Exotel (no phone rings): the same as CALLBRIDGE_SIMULATOR=true",
    )

    simulate = commands.add_parser("simulate", help="run the Exotel simulator on its own port")
    simulate.add_argument("--host", default="127.0.0.1")
    simulate.add_argument("--port", type=int, default=9911)
    simulate.add_argument("--speed", type=float, default=10.0)

    worker = commands.add_parser(
        "worker", help="run the background jobs (reconciliation, notify relay) without the API"
    )
    worker.add_argument("--host", default="127.0.0.1", help="where to serve /metrics, /healthz")
    worker.add_argument("--port", type=int, help="default: WORKER_PORT, else 9100")

    args = parser.parse_args(argv)
    if args.command == "serve":
        if args.simulator:
            # The environment, not an argument: uvicorn's worker processes inherit it.
            os.environ["CALLBRIDGE_SIMULATOR"] = "true"
        settings = _settings_or_exit()
        if not settings.live and "public_base_url" not in settings.model_fields_set:
            # The mounted simulator calls back (and is called) through PUBLIC_BASE_URL:
            # unset, it is where this server listens, whatever --port says.
            os.environ["PUBLIC_BASE_URL"] = f"http://127.0.0.1:{args.port}"
        if not settings.live and not settings.api_clients and not _is_loopback(args.host):
            report_config_error(
                ConfigError(
                    [
                        "API_KEYS: required when serving on a non-loopback address "
                        "(open access is only for the simulator on 127.0.0.1)"
                    ]
                )
            )
            sys.exit(CONFIG_ERROR_EXIT)
        uvicorn.run(
            "app.main:app",
            host=args.host,
            port=args.port,
            workers=args.workers,
            **SERVER_OPTIONS,
        )
    elif args.command == "simulate":
        from app.exotel.simulator import serve_simulator

        # httpx logs every request URL at INFO: the callback URLs, tokens included.
        logging.getLogger("httpx").setLevel(logging.WARNING)
        serve_simulator(host=args.host, port=args.port, speed=args.speed)
    elif args.command == "worker":
        from app.jobs.worker import run_worker

        settings = _settings_or_exit()
        if args.port is not None:
            settings = settings.model_copy(update={"worker_port": args.port})
        asyncio.run(run_worker(settings, host=args.host))


if __name__ == "__main__":
    main()
