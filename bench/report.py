"""The table printed at the end of a bench run, and bench/results.md."""

from __future__ import annotations

import math
import platform
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import psutil  # type: ignore[import-untyped]
import psycopg

from app.db import PROJECT_ROOT
from bench.ingest import IngestResult
from bench.load import LoadResult
from bench.place import PlaceResult
from bench.read import ReadResult

PACKAGES = ("fastapi", "starlette", "uvicorn", "sqlalchemy", "psycopg", "pydantic", "httpx")


@dataclass(frozen=True)
class Row:
    measure: str
    figure: str
    target: str
    met: bool | None  # None: informational


def _ms(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.1f} ms"


def _lat(result: LoadResult) -> str:
    return f"p50 {_ms(result.p50_ms)}, p99 {_ms(result.p99_ms)}"


def _ok(result: LoadResult) -> str:
    bad = result.responses - result.ok + result.socket_errors
    return "" if bad == 0 else f" ({bad} not 2xx or failed)"


def rows(
    ingest: IngestResult | None, place: PlaceResult | None, read: ReadResult | None
) -> list[Row]:
    found: list[Row] = []
    if ingest is not None:
        cb, ref = ingest.callbridge, ingest.reference
        found += [
            Row(
                "callbacks: Callbridge, c=64",
                f"{cb.rps:,.0f} req/s, {_lat(cb)}{_ok(cb)}",
                "",
                None,
            ),
            Row(
                "callbacks: reference route, c=64",
                f"{ref.rps:,.0f} req/s, {_lat(ref)}{_ok(ref)}",
                "",
                None,
            ),
            Row(
                "callbacks: Callbridge / reference",
                f"{ingest.ratio:.2f}x",
                ">= 0.5x",
                ingest.ratio >= 0.5 and cb.ok == cb.responses,
            ),
            Row(
                "callbacks: acknowledged vs stored events",
                f"{cb.ok:,} 2xx, {ingest.events_stored:,} events stored",
                "stored >= 2xx",
                ingest.events_stored >= cb.ok,
            ),
            Row(
                "memory: Callbridge RSS under callback load",
                f"max {ingest.rss_max_mb:.0f} MB (idle {ingest.rss_idle_mb:.0f} MB)",
                "<= 150 MB",
                ingest.rss_max_mb <= 150,
            ),
        ]
    if place is not None:
        all_ok = place.callbridge.ok == place.callbridge.responses
        found += [
            Row(
                "POST /calls: simulator direct, c=32",
                f"{_lat(place.direct)}{_ok(place.direct)}",
                "",
                None,
            ),
            Row(
                "POST /calls: through Callbridge, c=32",
                f"{_lat(place.callbridge)}{_ok(place.callbridge)}",
                "",
                None,
            ),
            Row(
                "POST /calls: added by Callbridge, c=32",
                f"p50 +{place.added_p50_ms:.1f} ms, p99 +{place.added_p99_ms:.1f} ms",
                "p50 <= 2 ms, p99 <= 10 ms",
                all_ok and place.added_p50_ms <= 2 and place.added_p99_ms <= 10,
            ),
            Row(
                "POST /calls: added by Callbridge, c=1",
                f"p50 +{place.added_sequential_p50_ms:.1f} ms, "
                f"p99 +{place.added_sequential_p99_ms:.1f} ms",
                "",
                None,
            ),
        ]
    if read is not None:
        found += [
            Row(
                "GET /calls/{sid}, 1M calls",
                f"{_lat(read.by_sid)}{_ok(read.by_sid)}",
                "p99 <= 5 ms",
                read.by_sid.p99_ms <= 5 and read.by_sid.ok == read.by_sid.responses,
            ),
            Row(
                "GET /calls filtered pages, 1M calls",
                f"{_lat(read.listing)}{_ok(read.listing)}",
                "p99 <= 20 ms",
                read.listing.p99_ms <= 20 and read.listing.ok == read.listing.responses,
            ),
        ]
        big = read.listing_by_query.get("unfiltered, 200 a page")
        if big is not None:
            found.append(Row("GET /calls unfiltered, 200 a page", _lat(big) + _ok(big), "", None))
        found += [
            Row(
                "query plans use indexes",
                "yes"
                if not read.sequential_scans
                else "seq scan: " + ", ".join(read.sequential_scans),
                "no Seq Scan",
                not read.sequential_scans,
            ),
        ]
    return found


def table(found: list[Row]) -> str:
    headers = ("measure", "figure", "target", "met")
    cells = [
        (row.measure, row.figure, row.target, {True: "yes", False: "NO", None: ""}[row.met])
        for row in found
    ]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    lines = [
        "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)),
        "  ".join("-" * w for w in widths),
    ]
    lines += ["  ".join(c.ljust(w) for c, w in zip(cell, widths, strict=True)) for cell in cells]
    return "\n".join(lines)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git() -> str:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, check=False
        ).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = " (with uncommitted changes)" if git("status", "--porcelain", "--", "app") else ""
    return commit + dirty


def environment(server_url: str, postgres_how: str, generator: str) -> list[tuple[str, str]]:
    with psycopg.connect(server_url) as conn:
        row = conn.execute("SELECT version()").fetchone()
        shared_buffers = conn.execute("SHOW shared_buffers").fetchone()
    postgres = str(row[0]).split(" on ")[0] if row else "unknown"
    versions = ", ".join(f"{name} {metadata.version(name)}" for name in PACKAGES)
    return [
        ("date", datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")),
        (
            "machine",
            f"{_cpu_model()}, {psutil.cpu_count()} cores, "
            f"{psutil.virtual_memory().total / 2**30:.0f} GiB",
        ),
        ("system", f"{platform.system()} {platform.release()}"),
        ("python", platform.python_version()),
        (
            "postgres",
            f"{postgres} ({postgres_how}, shared_buffers "
            f"{shared_buffers[0] if shared_buffers else '?'})",
        ),
        ("packages", versions),
        ("load generator", generator),
        ("callbridge", f"commit {_git()}"),
    ]


def markdown(
    env: list[tuple[str, str]],
    found: list[Row],
    ingest: IngestResult | None,
    place: PlaceResult | None,
    read: ReadResult | None,
    notes: list[str],
) -> str:
    out = [
        "# Callbridge bench results",
        "",
        "Written by `scripts/bench` (`python -m bench`); see bench/README.md for what each "
        "figure measures and how.",
        "",
        "## Machine and versions",
        "",
        *(f"- {name}: {value}" for name, value in env),
        "",
        "## Figures",
        "",
        'Where a target is missed, bench/README.md ("Profiling") says why, what was '
        "changed and what would close the gap.",
        "",
        "| measure | figure | target | met |",
        "|---|---|---|---|",
        *(
            f"| {r.measure} | {r.figure} | {r.target} | "
            f"{ {True: 'yes', False: '**no**', None: ''}[r.met] } |"
            for r in found
        ),
        "",
    ]
    if ingest is not None:
        out += [
            "## Callback ingestion",
            "",
            f"Closed loop, concurrency {ingest.callbridge.concurrency}, "
            f"{ingest.callbridge.duration_s:.0f} s each after a warm-up, "
            f"{ingest.requests_prepared:,} distinct calls prepared.",
            "",
            "| server | req/s | p50 | p90 | p99 | max | 2xx | other |",
            "|---|---|---|---|---|---|---|---|",
            *(
                f"| {name} | {r.rps:,.0f} | {_ms(r.p50_ms)} | {_ms(r.p90_ms)} | "
                f"{_ms(r.p99_ms)} | {_ms(r.max_ms)} | {r.ok:,} | "
                f"{r.responses - r.ok + r.socket_errors:,} |"
                for name, r in (("Callbridge", ingest.callbridge), ("reference", ingest.reference))
            ),
            "",
        ]
    if place is not None:
        out += [
            "## Placing calls",
            "",
            f"{place.rounds} rounds; each round a fresh Callbridge process, "
            "so its Exotel rate limiter (200 a minute, at most, by contract) never holds a "
            "request. Latency seen by an httpx client.",
            "",
            "| path | concurrency | calls | p50 | p90 | p99 | max |",
            "|---|---|---|---|---|---|---|",
            *(
                f"| {name} | {r.concurrency} | {r.responses} | {_ms(r.p50_ms)} | "
                f"{_ms(r.p90_ms)} | {_ms(r.p99_ms)} | {_ms(r.max_ms)} |"
                for name, r in (
                    ("simulator direct", place.direct),
                    ("through Callbridge", place.callbridge),
                    ("simulator direct", place.direct_sequential),
                    ("through Callbridge", place.callbridge_sequential),
                )
            ),
            "",
        ]
    if read is not None:
        seeded = (
            "reused from an earlier run"
            if read.seed_seconds is None
            else f"seeded in {read.seed_seconds:.0f} s"
        )
        out += [
            "## Reading at scale",
            "",
            f"1,000,000 calls and 2,000,000 legs ({seeded}); requests one at a time. "
            f"Callbridge RSS after the reads: {read.rss_mb:.0f} MB.",
            "",
            "| request | count | p50 | p90 | p99 | max |",
            "|---|---|---|---|---|---|",
            f"| GET /calls/{{sid}} | {read.by_sid.responses} | {_ms(read.by_sid.p50_ms)} | "
            f"{_ms(read.by_sid.p90_ms)} | {_ms(read.by_sid.p99_ms)} | "
            f"{_ms(read.by_sid.max_ms)} |",
            *(
                f"| GET /calls: {name} | {r.responses} | {_ms(r.p50_ms)} | {_ms(r.p90_ms)} | "
                f"{_ms(r.p99_ms)} | {_ms(r.max_ms)} |"
                for name, r in read.listing_by_query.items()
            ),
            "",
            "### Query plans",
            "",
            "EXPLAIN (ANALYZE, BUFFERS) of the statements Callbridge sent for each request.",
            "",
        ]
        for what, plan in read.plans:
            out += [f"**{what}**", "", "```", plan, "```", ""]
    if notes:
        out += ["## Notes", "", *(f"- {note}" for note in notes), ""]
    return "\n".join(out)
