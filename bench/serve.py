"""`python -m bench.serve KIND --port N`: one server, with `callbridge serve`'s uvicorn settings.

KIND is `callbridge` (app.main:app, configured from the environment), `reference` (the
bare Starlette callback route of bench.reference, on REFERENCE_DATABASE_URL),
`read-reference` (its bare read routes, on REFERENCE_DATABASE_URL), `place-reference`
(its bare placing route, on REFERENCE_DATABASE_URL and Callbridge's EXOTEL_* settings) or
`simulator` (the Exotel simulator; SIMULATOR_SPEED, SIMULATOR_SLOW_ANSWER_S,
SIMULATOR_LOST_ANSWER_HANG_S, SIMULATOR_REQUESTS_PER_MINUTE (Exotel's 200 by default;
`none` for no limit), SIMULATOR_DATABASE_URL (keep its calls in Postgres)).
"""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any

import uvicorn

# What `callbridge serve` passes to uvicorn.run, less the port; one worker, one process.
UVICORN_SETTINGS: dict[str, Any] = {
    "host": "127.0.0.1",
    "workers": 1,
    "access_log": False,
    "log_config": None,
    "proxy_headers": True,
    "timeout_graceful_shutdown": 20,
}


def _simulator() -> Any:
    from app.exotel.simulator import Simulator, SimulatorConfig

    logging.basicConfig(level=logging.WARNING)
    defaults = SimulatorConfig()
    config = SimulatorConfig(
        speed=float(os.environ.get("SIMULATOR_SPEED", defaults.speed)),
        slow_answer_s=float(os.environ.get("SIMULATOR_SLOW_ANSWER_S", defaults.slow_answer_s)),
        lost_answer_hang_s=float(
            os.environ.get("SIMULATOR_LOST_ANSWER_HANG_S", defaults.lost_answer_hang_s)
        ),
        requests_per_minute=_optional_int(
            os.environ.get("SIMULATOR_REQUESTS_PER_MINUTE"), defaults.requests_per_minute
        ),
    )
    return Simulator(config, database=os.environ.get("SIMULATOR_DATABASE_URL") or None).app


def _optional_int(raw: str | None, default: int | None) -> int | None:
    if raw is None:
        return default
    return None if raw.strip().lower() == "none" else int(raw)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.serve")
    parser.add_argument(
        "kind",
        choices=["callbridge", "reference", "read-reference", "place-reference", "simulator"],
    )
    parser.add_argument("--port", type=int, required=True)
    arguments = parser.parse_args()
    app: Any
    if arguments.kind == "callbridge":
        app = "app.main:app"
    elif arguments.kind == "reference":
        logging.basicConfig(level=logging.WARNING)
        app = "bench.reference:app"
    elif arguments.kind == "read-reference":
        logging.basicConfig(level=logging.WARNING)
        app = "bench.reference:read_app"
    elif arguments.kind == "place-reference":
        logging.basicConfig(level=logging.WARNING)
        app = "bench.reference:place_app"
    else:
        app = _simulator()
    uvicorn.run(app, port=arguments.port, **UVICORN_SETTINGS)


if __name__ == "__main__":
    main()
