"""Load generators: wrk when the machine has it, else a small asyncio HTTP/1.1 client.

Both keep `concurrency` keep-alive connections busy for a fixed time (a closed loop),
cycle through a list of prepared requests, and report throughput and latency
percentiles. The asyncio client is written on raw streams rather than httpx so that it
costs the 2-core machine little CPU next to the server it measures.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

Generator = Literal["wrk", "python"]

_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.IGNORECASE)
_CHUNKED = re.compile(rb"\r\ntransfer-encoding:[ \t]*chunked", re.IGNORECASE)
_CLOSE = re.compile(rb"\r\nconnection:[ \t]*close", re.IGNORECASE)


@dataclass(frozen=True)
class HttpRequest:
    method: str
    target: str  # path and query
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return math.nan
    rank = max(math.ceil(fraction * len(sorted_values)), 1)
    return sorted_values[rank - 1]


@dataclass
class LoadResult:
    generator: str
    concurrency: int
    duration_s: float
    responses: int
    ok: int  # 2xx
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    statuses: Counter[int] = field(default_factory=Counter)
    socket_errors: int = 0

    @property
    def rps(self) -> float:
        return self.ok / self.duration_s if self.duration_s else 0.0

    @classmethod
    def from_latencies(
        cls,
        generator: str,
        concurrency: int,
        duration_s: float,
        latencies_ms: list[float],
        statuses: Counter[int],
        socket_errors: int = 0,
    ) -> LoadResult:
        ordered = sorted(latencies_ms)
        return cls(
            generator=generator,
            concurrency=concurrency,
            duration_s=duration_s,
            responses=len(ordered),
            ok=sum(count for status, count in statuses.items() if 200 <= status < 300),
            p50_ms=percentile(ordered, 0.50),
            p90_ms=percentile(ordered, 0.90),
            p99_ms=percentile(ordered, 0.99),
            max_ms=ordered[-1] if ordered else math.nan,
            statuses=statuses,
            socket_errors=socket_errors,
        )


def _encode(request: HttpRequest, host: str) -> bytes:
    lines = [f"{request.method} {request.target} HTTP/1.1", f"Host: {host}"]
    lines += [f"{name}: {value}" for name, value in request.headers]
    if request.body or request.method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(request.body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + request.body


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Read one response; its status and whether the server will close the connection."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    if (length := _CONTENT_LENGTH.search(head)) is not None:
        await reader.readexactly(int(length.group(1)))
    elif _CHUNKED.search(head):
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    return status, _CLOSE.search(head) is not None


async def python_load(
    host: str,
    port: int,
    requests: Sequence[HttpRequest],
    *,
    concurrency: int,
    duration_s: float | None = None,
    total: int | None = None,
) -> LoadResult:
    """Closed-loop load over `concurrency` keep-alive connections, for `duration_s`
    seconds or `total` requests, cycling through `requests`."""
    assert duration_s is not None or total is not None
    encoded = [_encode(request, f"{host}:{port}") for request in requests]
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    errors = 0
    next_index = 0
    started = time.perf_counter()
    deadline = started + duration_s if duration_s is not None else math.inf

    def take() -> bytes | None:
        nonlocal next_index
        if time.perf_counter() >= deadline or (total is not None and next_index >= total):
            return None
        raw = encoded[next_index % len(encoded)]
        next_index += 1
        return raw

    async def connection() -> None:
        nonlocal errors
        reader: asyncio.StreamReader | None = None
        writer: asyncio.StreamWriter | None = None
        try:
            while (raw := take()) is not None:
                if writer is None:
                    reader, writer = await asyncio.open_connection(host, port)
                assert reader is not None
                sent = time.perf_counter()
                try:
                    writer.write(raw)
                    status, closing = await _read_response(reader)
                except (OSError, asyncio.IncompleteReadError):
                    errors += 1
                    writer.close()
                    reader = writer = None
                    continue
                latencies.append((time.perf_counter() - sent) * 1000)
                statuses[status] += 1
                if closing:
                    writer.close()
                    reader = writer = None
        finally:
            if writer is not None:
                writer.close()

    await asyncio.gather(*(connection() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    return LoadResult.from_latencies("python", concurrency, elapsed, latencies, statuses, errors)


# -- wrk ---------------------------------------------------------------------------

WRK_SCRIPT = r"""
local requests = {}
local counter = 0

function init(args)
  for line in io.lines(args[1]) do
    local method, target, content_type, authorization, body =
      line:match("^([^\t]*)\t([^\t]*)\t([^\t]*)\t([^\t]*)\t(.*)$")
    local headers = {}
    if content_type ~= "" then headers["Content-Type"] = content_type end
    if authorization ~= "" then headers["Authorization"] = authorization end
    if body == "" then body = nil end
    requests[#requests + 1] = wrk.format(method, target, headers, body)
  end
end

function request()
  counter = counter + 1
  return requests[(counter - 1) % #requests + 1]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\nWRK_JSON {"requests": %d, "duration_us": %d, "status_errors": %d, '
    .. '"socket_errors": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""


def wrk_version() -> str | None:
    path = shutil.which("wrk")
    if path is None:
        return None
    completed = subprocess.run([path, "--version"], capture_output=True, text=True, check=False)
    first = (completed.stdout or completed.stderr).splitlines()
    return first[0].split(" Copyright")[0] if first else "wrk"


def ensure_wrk() -> tuple[str | None, str]:
    """wrk's version, installing Debian's package when possible; else None and why not."""
    version = wrk_version()
    if version is not None:
        return version, "found on PATH"
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return None, "wrk is not installed (and apt-get is not usable here)"
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (
        ["apt-get", "install", "-y", "-qq", "wrk"],
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "wrk"],
    ):
        try:
            subprocess.run(command, env=environment, capture_output=True, timeout=150, check=False)
        except subprocess.TimeoutExpired:
            break
        if (version := wrk_version()) is not None:
            return version, "installed with apt-get"
    return None, "apt-get could not install wrk"


def wrk_load(
    host: str,
    port: int,
    requests: Sequence[HttpRequest],
    *,
    concurrency: int,
    duration_s: float,
    work_dir: Path,
) -> LoadResult:
    """Run wrk with one thread (it needs no more) and `concurrency` connections."""
    work_dir.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.NamedTemporaryFile("w", suffix=".tsv", dir=work_dir, delete=False) as listing,
        tempfile.NamedTemporaryFile("w", suffix=".lua", dir=work_dir, delete=False) as script,
    ):
        for request in requests:
            headers = dict(request.headers)
            unsupported = set(headers) - {"Content-Type", "Authorization"}
            if unsupported:
                raise ValueError(f"the wrk script sends no {', '.join(sorted(unsupported))}")
            fields = [
                request.method,
                request.target,
                headers.get("Content-Type", ""),
                headers.get("Authorization", ""),
                request.body.decode(),
            ]
            if any("\t" in value or "\n" in value for value in fields):
                raise ValueError("wrk requests are one line each: no tab or newline in them")
            listing.write("\t".join(fields) + "\n")
        script.write(WRK_SCRIPT)
    try:
        completed = subprocess.run(
            [
                "wrk",
                "-t1",
                f"-c{concurrency}",
                f"-d{max(round(duration_s), 1)}s",
                "--timeout",
                "10s",
                "-s",
                script.name,
                f"http://{host}:{port}",
                "--",
                listing.name,
            ],
            capture_output=True,
            text=True,
            timeout=duration_s + 60,
            check=True,
        )
    finally:
        Path(listing.name).unlink(missing_ok=True)
        Path(script.name).unlink(missing_ok=True)
    line = next(line for line in completed.stdout.splitlines() if line.startswith("WRK_JSON "))
    summary = json.loads(line.removeprefix("WRK_JSON "))
    responses = int(summary["requests"])
    failed = int(summary["status_errors"])
    # wrk counts answers >= 400 as status errors; the rest are 2xx here (no redirects).
    statuses: Counter[int] = Counter({200: responses - failed})
    if failed:
        statuses[400] = failed
    return LoadResult(
        generator="wrk",
        concurrency=concurrency,
        duration_s=int(summary["duration_us"]) / 1e6,
        responses=responses,
        ok=responses - failed,
        p50_ms=int(summary["p50_us"]) / 1000,
        p90_ms=int(summary["p90_us"]) / 1000,
        p99_ms=int(summary["p99_us"]) / 1000,
        max_ms=int(summary["max_us"]) / 1000,
        statuses=statuses,
        socket_errors=int(summary["socket_errors"]),
    )
