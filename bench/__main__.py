"""`python -m bench` (or `scripts/bench`): measure Callbridge, print a table, write results.

    python -m bench                  every measure, about 3 minutes (the first run also
                                     seeds 1,000,000 calls: about 1 more)
    python -m bench ingest|place|read  one measure
    python -m bench faults           the fault suite's full variant (FAULTS_FULL=1 pytest)
    --quick                          short runs, a smoke test (does not write results.md)

Postgres: --database-url, else BENCH_DATABASE_URL, else the machine's on 127.0.0.1:5432,
else an embedded one under .callbridge/bench. Each measure uses databases of its own.
Load: wrk if installed (the bench installs Debian's package when it runs as root),
else a small asyncio client (--loadgen python forces it).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from app.db import PROJECT_ROOT
from bench import ingest, place, read
from bench.load import ensure_wrk
from bench.report import environment, markdown, rows, table
from bench.servers import OUT_DIR, postgres_server

RESULTS = PROJECT_ROOT / "bench" / "results.md"


def _faults(quick: bool) -> int:
    environment = {**os.environ}
    if not quick:
        environment["FAULTS_FULL"] = "1"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/faults"]
    print("$", " ".join(command), "" if quick else "(FAULTS_FULL=1)", flush=True)
    return subprocess.run(command, cwd=PROJECT_ROOT, env=environment, check=False).returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument(
        "what", nargs="?", default="all", choices=["all", "ingest", "place", "read", "faults"]
    )
    parser.add_argument("--quick", action="store_true", help="short runs; results.md untouched")
    parser.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL"))
    parser.add_argument("--loadgen", choices=["auto", "wrk", "python"], default="auto")
    parser.add_argument("--reseed", action="store_true", help="seed the 1M calls anew")
    parser.add_argument("--out", type=Path, help=f"where to write the results ({RESULTS})")
    arguments = parser.parse_args(argv)
    if arguments.what == "faults":
        return _faults(arguments.quick)

    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for old_log in OUT_DIR.glob("*.log"):
        old_log.unlink()
    load_before = os.getloadavg()
    server_url, postgres_how = postgres_server(arguments.database_url)
    notes: list[str] = []
    generator = "python"
    generator_text = "asyncio HTTP/1.1 client (bench/load.py)"
    if arguments.what in ("all", "ingest", "read") and arguments.loadgen != "python":
        version, how = ensure_wrk()
        if version is not None:
            generator, generator_text = "wrk", f"{version}, 1 thread ({how})"
        elif arguments.loadgen == "wrk":
            parser.error(f"--loadgen wrk: {how}")
        else:
            notes.append(f"wrk unavailable ({how}): the asyncio client drove the callbacks.")
    print(f"Postgres: {postgres_how}; load generator: {generator_text}", flush=True)

    ingested = placed = read_result = None
    if arguments.what in ("all", "ingest"):
        print("callback ingestion (Callbridge, then the reference; apply lag) ...", flush=True)
        ingested = ingest.run(
            server_url,
            generator=generator,
            duration_s=3 if arguments.quick else 15,
            warmup_s=1 if arguments.quick else 5,
            calls=ingest.WARMUP_CALLS + (10_000 if arguments.quick else 60_000),
        )
        if ingested.callbridge.responses > ingested.requests_prepared:
            notes.append(
                "More callbacks were sent than calls prepared: the last "
                f"{ingested.callbridge.responses - ingested.requests_prepared:,} were duplicates."
            )
    if arguments.what in ("all", "place"):
        print(
            "placing calls (direct and through Callbridge, interleaved; "
            "a fresh database each round) ...",
            flush=True,
        )
        placed = place.run(server_url, rounds=1 if arguments.quick else 4)
    if arguments.what in ("all", "read"):
        print(
            "reading at scale, Callbridge and the read reference "
            "(seeding 1,000,000 calls if not already there) ...",
            flush=True,
        )
        read_result = read.run(
            server_url,
            reseed=arguments.reseed,
            generator=generator,
            list_rounds=10 if arguments.quick else 60,
            duration_s=2 if arguments.quick else 8,
            warmup_s=1 if arguments.quick else 2,
        )

    found = rows(ingested, placed, read_result)
    print()
    print(table(found))
    env = environment(server_url, postgres_how, generator_text)
    load_after = os.getloadavg()
    env.append(
        (
            "load average (1, 5, 15 min)",
            f"{' '.join(f'{x:.2f}' for x in load_before)} before, "
            f"{' '.join(f'{x:.2f}' for x in load_after)} after; the bench itself adds about 2",
        )
    )
    out = arguments.out or (None if arguments.quick else RESULTS)
    if out is not None:
        out.write_text(markdown(env, found, ingested, placed, read_result, notes))
        print(f"\nwritten to {out}")
    for note in notes:
        print("note:", note)
    return 0 if all(row.met is not False for row in found) else 1


if __name__ == "__main__":
    sys.exit(main())
