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
from bench.ingest import IngestResult, Lag
from bench.load import LoadResult
from bench.place import CONCURRENCY, PlaceResult
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


def _cpu(ms: float) -> str:
    return "n/a" if math.isnan(ms) else f"{ms:.2f} ms"


def _ratio(numerator: float, denominator: float) -> str:
    if math.isnan(numerator) or math.isnan(denominator) or not denominator:
        return "n/a"
    return f"{numerator / denominator:.1f}x"


def _lag(lag: Lag) -> str:
    return f"p50 {_ms(lag.p50_ms)}, p99 {_ms(lag.p99_ms)}, max {_ms(lag.max_ms)} ({lag.count:,})"


def _ingest_rows(ingest: IngestResult) -> list[Row]:
    cb, ref = ingest.callbridge, ingest.reference
    cpu, ref_cpu = ingest.cpu_ms_per_callback, ingest.reference_cpu_ms_per_callback
    drained = "" if ingest.drained else ", NOT drained"
    return [
        Row("callbacks: Callbridge, c=64", f"{cb.rps:,.0f} req/s, {_lat(cb)}{_ok(cb)}", "", None),
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
            "callbacks: CPU per callback, Callbridge (storing + applying)",
            f"{_cpu(cpu)} (reference {_cpu(ref_cpu)}: {_ratio(cpu, ref_cpu)})",
            "<= 1 ms",
            cpu <= 1 and ingest.drained,
        ),
        Row(
            "callbacks: apply lag under the load (processed_at - received_at)",
            f"{_lag(ingest.lag_load)}; backlog {ingest.backlog_at_end:,} at the end, "
            f"drained in {ingest.drain_s:.1f} s{drained}",
            "p99 <= 1 s",
            ingest.lag_load.p99_ms <= 1000 and ingest.drained,
        ),
        Row(
            "callbacks: apply lag idle (processed_at - received_at)",
            _lag(ingest.lag_idle),
            "p50 <= 20 ms",
            ingest.lag_idle.p50_ms <= 20,
        ),
        Row(
            "callbacks: idle, 2xx to the call showing it (polled)",
            _lag(ingest.visible_idle),
            "",
            None,
        ),
        Row(
            "memory: Callbridge RSS under callback load",
            f"max {ingest.rss_max_mb:.0f} MB (idle {ingest.rss_idle_mb:.0f} MB)",
            "<= 150 MB",
            ingest.rss_max_mb <= 150,
        ),
    ]


def _place_rows(place: PlaceResult) -> list[Row]:
    all_ok = (
        place.callbridge.ok == place.callbridge.responses
        and place.callbridge_sequential.ok == place.callbridge_sequential.responses
    )
    found: list[Row] = []
    for concurrency, key, direct, callbridge, reference, added, target, met in (
        (
            1,
            "1",
            place.direct_sequential,
            place.callbridge_sequential,
            place.reference_sequential,
            (place.added_sequential_p50_ms, place.added_sequential_p99_ms),
            "p50 <= +2 ms, p99 <= +10 ms",
            place.added_sequential_p50_ms <= 2 and place.added_sequential_p99_ms <= 10,
        ),
        (
            CONCURRENCY,
            "",
            place.direct,
            place.callbridge,
            place.reference,
            (place.added_p50_ms, place.added_p99_ms),
            "p99 <= +25 ms",
            place.added_p99_ms <= 25,
        ),
    ):
        c = f"c={concurrency}"
        reference_added = (reference.p50_ms - direct.p50_ms, reference.p99_ms - direct.p99_ms)
        cpu_callbridge, cpu_reference = place.cpu_ms["c" + key], place.cpu_ms["r" + key]
        found += [
            Row(f"POST /calls: simulator direct, {c}", _lat(direct), "", None),
            Row(
                f"POST /calls: through Callbridge, {c}",
                _lat(callbridge) + _ok(callbridge),
                "",
                None,
            ),
            Row(
                f"POST /calls: added by Callbridge, {c}",
                f"p50 {added[0]:+.1f} ms, p99 {added[1]:+.1f} ms",
                target,
                all_ok and met,
            ),
            Row(
                f"POST /calls: added by the placing reference, {c}",
                f"p50 {reference_added[0]:+.1f} ms, p99 {reference_added[1]:+.1f} ms "
                f"({_lat(reference)}{_ok(reference)})",
                "",
                None,
            ),
            Row(
                f"POST /calls: CPU a call, Callbridge vs the placing reference, {c}",
                f"{_cpu(cpu_callbridge)} vs {_cpu(cpu_reference)} "
                f"({cpu_callbridge / cpu_reference:.1f}x)",
                "",
                None,
            ),
        ]
    found.append(
        Row(
            "POST /calls: limiters out of the way",
            f"{place.limited} refusals (429/503); {place.rounds} rounds, fresh database each; "
            + (
                "Postgres GCRA buckets pinned empty"
                if place.buckets_pinned
                else "no Postgres limiter in this build (in-process bucket: fresh process)"
            ),
            "0 refusals",
            place.limited == 0,
        )
    )
    return found


def _read_rows(read: ReadResult) -> list[Row]:
    found = [
        Row(
            f"{c.what}, 1M calls, c={c.concurrency}: Callbridge / reference",
            f"{c.ratio:.2f}x ({c.callbridge.rps:,.0f} vs {c.reference.rps:,.0f} req/s; "
            f"p50 {_ms(c.callbridge.p50_ms)} vs {_ms(c.reference.p50_ms)}, "
            f"p99 {_ms(c.callbridge.p99_ms)} vs {_ms(c.reference.p99_ms)}; "
            f"CPU {_cpu(c.cpu_ms)} vs {_cpu(c.reference_cpu_ms)} a request)"
            f"{_ok(c.callbridge)}",
            ">= 0.5x",
            c.ratio >= 0.5 and c.all_ok,
        )
        for c in read.comparisons
    ]
    found.append(
        Row(
            "GET /calls filtered pages, httpx, one at a time",
            _lat(read.listing) + _ok(read.listing),
            "",
            None,
        )
    )
    big = read.listing_by_query.get("unfiltered, 200 a page")
    if big is not None:
        found.append(Row("GET /calls unfiltered, 200 a page", _lat(big) + _ok(big), "", None))
    found.append(
        Row(
            "query plans use indexes",
            "yes" if not read.sequential_scans else "seq scan: " + ", ".join(read.sequential_scans),
            "no Seq Scan of calls or call_legs",
            not read.sequential_scans,
        )
    )
    return found


def rows(
    ingest: IngestResult | None, place: PlaceResult | None, read: ReadResult | None
) -> list[Row]:
    found: list[Row] = []
    if ingest is not None:
        found += _ingest_rows(ingest)
    if place is not None:
        found += _place_rows(place)
    if read is not None:
        found += _read_rows(read)
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
        'Where a target is missed, bench/README.md ("Where the time goes now") says '
        "why and what would close the gap.",
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
            "| server | req/s | p50 | p90 | p99 | max | 2xx | other | CPU a request |",
            "|---|---|---|---|---|---|---|---|---|",
            *(
                f"| {name} | {r.rps:,.0f} | {_ms(r.p50_ms)} | {_ms(r.p90_ms)} | "
                f"{_ms(r.p99_ms)} | {_ms(r.max_ms)} | {r.ok:,} | "
                f"{r.responses - r.ok + r.socket_errors:,} | {_cpu(cpu)} |"
                for name, r, cpu in (
                    ("Callbridge", ingest.callbridge, ingest.cpu_ms_per_callback),
                    ("reference", ingest.reference, ingest.reference_cpu_ms_per_callback),
                )
            ),
            "",
            "CPU a request: the server process's user + system time over the measured load "
            "(Callbridge's until its applier, in the same process, had applied everything "
            "the load stored), divided by the requests it handled (rows stored; the load "
            "generator does not count those in flight when it stops).",
            "",
            "| apply lag | events | p50 | p99 | max |",
            "|---|---|---|---|---|",
            *(
                f"| {name} | {lag.count:,} | {_ms(lag.p50_ms)} | {_ms(lag.p99_ms)} | "
                f"{_ms(lag.max_ms)} |"
                for name, lag in (
                    ("under the load: processed_at - received_at", ingest.lag_load),
                    ("idle, one at a time: processed_at - received_at", ingest.lag_idle),
                    ("idle: 2xx to the call row showing it (polled)", ingest.visible_idle),
                )
            ),
            "",
            f"When the load stopped, {ingest.backlog_at_end:,} stored callbacks waited; the "
            f"applier drained them in {ingest.drain_s:.1f} s"
            + ("." if ingest.drained else " (NOT drained: the bench stopped waiting).")
            + " received_at is the service's clock when the request came in; processed_at "
            "Postgres' clock when the applier wrote its batch back (clock_timestamp() in "
            "its last statement, just before the commit).",
            "",
        ]
    if place is not None:
        out += [
            "## Placing calls",
            "",
            f"{place.rounds} rounds; each round a fresh database and a fresh Callbridge "
            "process, at most 200 calls, the per-client limit far above that, and "
            + (
                "the Postgres GCRA buckets kept empty by a bench-only trigger"
                if place.buckets_pinned
                else "no Postgres limiter in this build"
            )
            + f" (bench/place.py): {place.limited} limiter refusals. Latency seen by an "
            "httpx client.",
            "",
            "| path | concurrency | calls | p50 | p90 | p99 | max |",
            "|---|---|---|---|---|---|---|",
            *(
                f"| {name} | {r.concurrency} | {r.responses} | {_ms(r.p50_ms)} | "
                f"{_ms(r.p90_ms)} | {_ms(r.p99_ms)} | {_ms(r.max_ms)} |"
                for name, r in (
                    ("simulator direct", place.direct),
                    ("through Callbridge", place.callbridge),
                    ("through the placing reference", place.reference),
                    ("simulator direct", place.direct_sequential),
                    ("through Callbridge", place.callbridge_sequential),
                    ("through the placing reference", place.reference_sequential),
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
            f"1,000,000 calls and 2,000,000 legs ({seeded}). Callbridge RSS after the "
            f"reads: {read.rss_mb:.0f} MB.",
            "",
            "Callbridge and the read reference (bench/reference.py, one statement, JSON "
            "built by Postgres), the same requests, each for the same time after a warm-up:",
            "",
            "| request | c | server | req/s | p50 | p90 | p99 | max | CPU a request | ratio |",
            "|---|---|---|---|---|---|---|---|---|---|",
            *(
                f"| {c.what} | {c.concurrency} | {name} | {r.rps:,.0f} | {_ms(r.p50_ms)} | "
                f"{_ms(r.p90_ms)} | {_ms(r.p99_ms)} | {_ms(r.max_ms)} | {_cpu(cpu)} | "
                f"{ratio} |"
                for c in read.comparisons
                for name, r, cpu, ratio in (
                    ("Callbridge", c.callbridge, c.cpu_ms, f"{c.ratio:.2f}x"),
                    ("reference", c.reference, c.reference_cpu_ms, ""),
                )
            ),
            "",
            "The pages' first pass through Callbridge (httpx, one request at a time, "
            "following next_cursor), by kind of page:",
            "",
            "| request | count | p50 | p90 | p99 | max |",
            "|---|---|---|---|---|---|",
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
