"""Placing calls through two checkouts of Callbridge side by side: is a change faster?

    git worktree add /tmp/before <commit>
    .venv/bin/python -m bench.compare /tmp/before [--concurrency 1] [--calls 400] [--rounds 4]

One simulator (its own process, as in bench/place.py) and two Callbridge processes, one
run from the other checkout and one from this one, each on a fresh database of its own
with the limiters out of the way (bench/place.py). The same client places calls
through each in turn, `--calls` at a time, alternating which goes first, so that a
machine whose speed drifts (this one's did, 1.5x within an hour) weighs on both alike.
Prints, for each, the latency percentiles and the CPU its process spent a call, and the
ratio of the two. Both checkouts run with this checkout's virtual environment.
"""

from __future__ import annotations

import argparse
import asyncio
from collections import Counter
from pathlib import Path

from app.db import PROJECT_ROOT
from bench import place
from bench.place import Round, Sample
from bench.servers import (
    LOCAL_POSTGRES,
    OUT_DIR,
    WRITER_KEY,
    Server,
    callbridge_env,
    drop_database,
    running,
)


def _callbridge(name: str, checkout: Path, simulator: Server) -> Server:
    database, _ = place.round_database(LOCAL_POSTGRES, f"callbridge_bench_compare_{name}")
    callbridge = Server("callbridge", {}, OUT_DIR / f"compare-{name}.log", checkout=checkout)
    callbridge.env = callbridge_env(
        database,
        exotel_url=simulator.url,
        public_base_url=callbridge.url,
        exotel_requests_per_minute=str(place.EXOTEL_BUDGET),
        calls_per_minute_per_client=str(place.CALLS_PER_MINUTE_PER_CLIENT),
    )
    return callbridge.start()


async def _measure(
    callbridges: dict[str, Server], session: Round, *, calls: int, concurrency: int, rounds: int
) -> dict[str, tuple[list[Sample], float]]:
    measured: dict[str, tuple[list[Sample], float]] = {name: ([], 0.0) for name in callbridges}
    order = list(callbridges)
    headers = {"Authorization": f"Bearer {WRITER_KEY}"}
    clients = {name: place._client(server.url, headers) for name, server in callbridges.items()}
    try:
        for name in order:
            await session.through(clients[name], place.WARMUP, place.CONCURRENCY)
        for turn in range(rounds):
            for name in order if turn % 2 == 0 else order[::-1]:
                started_cpu = callbridges[name].cpu_seconds()
                samples, _ = await session.through(clients[name], calls, concurrency)
                spent = callbridges[name].cpu_seconds() - started_cpu
                collected, cpu = measured[name]
                measured[name] = (collected + samples, cpu + spent)
    finally:
        for client in clients.values():
            await client.aclose()
    return measured


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__)
    parser.add_argument("before", type=Path, help="the other checkout (a git worktree)")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--calls", type=int, default=400, help="calls a turn")
    parser.add_argument("--rounds", type=int, default=4)
    arguments = parser.parse_args()
    checkouts = {"before": arguments.before.resolve(), "this": PROJECT_ROOT}
    simulator = Server(
        "simulator",
        {"SIMULATOR_SPEED": "1", "SIMULATOR_REQUESTS_PER_MINUTE": "none"},
        OUT_DIR / "compare-simulator.log",
    )
    callbridges: dict[str, Server] = {}
    try:
        with running(simulator):
            for name, checkout in checkouts.items():
                callbridges[name] = _callbridge(name, checkout, simulator)
            measured = asyncio.run(
                _measure(
                    callbridges,
                    Round(simulator, place.Numbers()),
                    calls=arguments.calls,
                    concurrency=arguments.concurrency,
                    rounds=arguments.rounds,
                )
            )
    finally:
        for server in callbridges.values():
            server.stop()
        for name in checkouts:
            drop_database(LOCAL_POSTGRES, f"callbridge_bench_compare_{name}")
    cpu_ms = {}
    for name, (samples, cpu_s) in measured.items():
        latencies = sorted(latency for latency, _ in samples)
        cpu_ms[name] = cpu_s / len(samples) * 1000
        statuses = dict(Counter(status for _, status in samples))
        print(
            f"{name:6s} POST /calls c={arguments.concurrency}: "
            f"p50 {latencies[len(latencies) // 2]:.2f} ms, "
            f"p99 {latencies[int(0.99 * (len(latencies) - 1))]:.2f} ms, "
            f"CPU {cpu_ms[name]:.2f} ms a call, answers {statuses}"
        )
    print(f"CPU a call, this / before: {cpu_ms['this'] / cpu_ms['before']:.2f}x")


if __name__ == "__main__":
    main()
