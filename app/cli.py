"""`callbridge` command: serve the API, run the Exotel simulator alone, or run background jobs."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import uvicorn

# How `serve` runs uvicorn (tests/ops/test_shutdown.py serves with the same options).
SERVER_OPTIONS: dict[str, Any] = {
    # Our request log replaces uvicorn's, which would print query strings: callback tokens.
    "access_log": False,
    "log_config": None,
    "proxy_headers": True,
    # On SIGTERM, requests in flight get this long to finish (compose allows 30 s).
    "timeout_graceful_shutdown": 20,
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="callbridge", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve the HTTP API (and, by default, the jobs)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1)

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
        uvicorn.run(
            "app.main:app",
            host=args.host,
            port=args.port,
            workers=args.workers,
            **SERVER_OPTIONS,
        )
    elif args.command == "simulate":
        from app.exotel.simulator import serve_simulator

        serve_simulator(host=args.host, port=args.port, speed=args.speed)
    elif args.command == "worker":
        from app.config import get_settings
        from app.jobs.worker import run_worker

        settings = get_settings()
        if args.port is not None:
            settings = settings.model_copy(update={"worker_port": args.port})
        asyncio.run(run_worker(settings, host=args.host))


if __name__ == "__main__":
    main()
