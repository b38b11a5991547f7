"""`python -m app.exotel.simulator`: the simulator on its own port (as `callbridge simulate`)."""

from __future__ import annotations

import argparse

from app.exotel.simulator import SimulatorConfig, serve_simulator


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m app.exotel.simulator", description="Run the Exotel simulator."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9911)
    parser.add_argument(
        "--speed",
        type=float,
        default=SimulatorConfig.speed,
        help="simulated seconds per real second (default %(default)s)",
    )
    parser.add_argument(
        "--database-url",
        help="keep calls in this Postgres (tables sim_*) so they outlive a restart",
    )
    arguments = parser.parse_args()
    serve_simulator(
        host=arguments.host,
        port=arguments.port,
        speed=arguments.speed,
        database_url=arguments.database_url,
    )


if __name__ == "__main__":
    main()
