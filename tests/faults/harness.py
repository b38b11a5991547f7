"""What the fault tests share: a private Postgres they may restart, servers in their own
processes, the simulator's view of what was placed, and a report printed with each run.

Everything runs on 127.0.0.1 (or a unix socket). FAULTS_FULL=1 (or `python -m bench
faults`) runs the full sizes; the default, quick sizes keep the suite under a minute.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg

from app.calls.tokens import CallbackTokens
from app.db import PROJECT_ROOT
from app.embedded import EmbeddedPostgres
from app.exotel.simulator import SimulatorConfig
from bench.servers import Server, create_database, libpq_url, sqlalchemy_url

FINAL = frozenset({"completed", "failed", "busy", "no-answer", "canceled"})
CALLBACK_SECRET = "faults-callback-secret-not-for-production"
WRITER_KEY = "faults-writer-key-not-for-production-0"
LOGS = PROJECT_ROOT / ".callbridge" / "faults" / "logs"


def full() -> bool:
    return os.environ.get("FAULTS_FULL") == "1"


def sized(quick: int, full_size: int) -> int:
    return full_size if full() else quick


class PrivatePostgres:
    """An embedded Postgres under .callbridge/faults, for these tests alone."""

    def __init__(self, data_dir: Path) -> None:
        self.server = EmbeddedPostgres(data_dir)
        self.url = libpq_url(self.server.start())

    def database(self, name: str) -> str:
        """A new database, migrated (call it off the event loop: migrating runs its own)."""
        return create_database(self.url, name, migrated=True)

    def restart(self) -> float:
        """Restart as after a crash (immediate shutdown: no checkpoint); the seconds it took."""
        started = time.monotonic()
        self.server.control("-m", "immediate", "restart")
        return time.monotonic() - started

    def stop(self) -> None:
        self.server.stop()


@dataclass
class Report:
    """What a fault run tried and found, printed whether it passes or not."""

    title: str
    lines: list[str] = field(default_factory=list)

    def add(self, line: str) -> None:
        self.lines.append(line)

    def text(self) -> str:
        return "\n".join([f"--- {self.title}", *(f"    {line}" for line in self.lines)])


def callbridge(
    database_url: str,
    simulator_url: str,
    name: str,
    settings: Mapping[str, object],
    *,
    port: int | None = None,
) -> Server:
    """A Callbridge process in live mode against the simulator; `settings` by their
    names in lower case (run_jobs=..., ...)."""
    simulator = SimulatorConfig()
    server = Server("callbridge", {}, LOGS / f"{name}.log")
    if port is not None:
        server.port = port
    server.env = {
        "DATABASE_URL": sqlalchemy_url(database_url),
        "CALLBACK_SECRET": CALLBACK_SECRET,
        "API_KEYS": f"faults:{WRITER_KEY}:write",
        "EXOTEL_ACCOUNT_SID": simulator.account_sid,
        "EXOTEL_API_KEY": simulator.api_key,
        "EXOTEL_API_TOKEN": simulator.api_token,
        "EXOTEL_BASE_URL": simulator_url,
        "EXOTEL_CALLER_ID": "08047112233",
        "PUBLIC_BASE_URL": server.url,
        "LOG_FORMAT": "json",
        "NOTIFY_SECRET": "whsec_" + "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
        **{key.upper(): str(value) for key, value in settings.items()},
    }
    return server


def simulator(name: str, **settings: Any) -> Server:
    return Server(
        "simulator",
        {f"SIMULATOR_{key.upper()}": str(value) for key, value in settings.items()},
        LOGS / f"{name}.log",
    )


def call_id_of(status_callback: str) -> uuid.UUID | None:
    """The call a StatusCallback URL's token names (the token is `<id hex>.<signature>`)."""
    token = status_callback.partition("token=")[2]
    return CallbackTokens(CALLBACK_SECRET).verify(token)


class SimulatorView:
    """What the simulator saw and did: connect requests, and the calls it placed."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        config = SimulatorConfig()
        self._http = http
        self._auth = httpx.BasicAuth(config.api_key, config.api_token)
        self._calls = f"/v1/Accounts/{config.account_sid}/Calls"

    async def connect_requests(self) -> list[dict[str, str]]:
        found: list[dict[str, str]] = (
            await self._http.get("/_sim/requests", auth=self._auth)
        ).json()
        return found

    async def placed(self) -> dict[str, dict[str, Any]]:
        """Every call the simulator placed, by Sid, with its current status and numbers."""
        calls: dict[str, dict[str, Any]] = {}
        path: str | None = f"{self._calls}.json"
        params: dict[str, str] | None = {"PageSize": "100"}
        while path is not None:
            response = await self._http.get(path, params=params, auth=self._auth)
            response.raise_for_status()
            page = response.json()
            for call in page["Calls"]:
                calls[call["Sid"]] = call
            path, params = page["Metadata"]["NextPageUri"], None
        return calls


@dataclass(frozen=True)
class StoredCall:
    id: uuid.UUID
    sid: str | None
    status: str
    to_number: str
    error_status: int | None


def stored_calls(database_url: str) -> list[StoredCall]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT id, sid, status, to_number, error_status FROM calls ORDER BY created_at"
        ).fetchall()
    return [StoredCall(*row) for row in rows]


def fast_forward_unsettled(database_url: str) -> int:
    """Make every call not yet final due for reconciliation now, as if the waits had
    passed: 2 minutes for a call left `pending`, 30 s for an `unknown` one (CallService),
    the 5-minute lease a killed process held on a call it was looking at, the backoff
    between looks (the reconciler). How many calls were moved."""
    with psycopg.connect(database_url) as conn:
        moved = conn.execute(
            "UPDATE calls SET next_reconcile_at = now() "
            "WHERE status <> ALL(%s) AND next_reconcile_at > now()",
            (sorted(FINAL),),
        ).rowcount
    return moved


def check_outcomes(
    calls: Iterable[StoredCall],
    placed: dict[str, dict[str, Any]],
    connects: list[dict[str, str]],
    report: Report,
) -> list[str]:
    """Every stored call is in a final status that agrees with the simulator, and no
    logical request (one callee number) was placed more than once. Returns the problems."""
    problems: list[str] = []
    calls = list(calls)
    placed_by_to: dict[str, list[str]] = {}
    for sid, placed_call in placed.items():
        placed_by_to.setdefault(placed_call["To"], []).append(sid)
    connects_by_call: dict[uuid.UUID | None, int] = {}
    for request in connects:
        call_id = call_id_of(request.get("StatusCallback", ""))
        connects_by_call[call_id] = connects_by_call.get(call_id, 0) + 1
    stored_sids = {call.sid for call in calls if call.sid}

    for to_number, sids in placed_by_to.items():
        if len(sids) > 1:
            problems.append(f"{to_number} was placed {len(sids)} times: {sids}")
    for sid in placed:
        if sid not in stored_sids:
            problems.append(f"the simulator placed {sid}, which no stored call knows")
    for call in calls:
        if call.status not in FINAL:
            problems.append(f"call {call.id} ended {call.status!r}")
        elif call.sid is not None:
            truth = placed.get(call.sid)
            if truth is None:
                problems.append(f"call {call.id} has sid {call.sid}, unknown to the simulator")
            elif truth["Status"] != call.status:
                problems.append(
                    f"call {call.id} is {call.status!r}, the simulator says {truth['Status']!r}"
                )
        elif call.status != "failed":
            problems.append(f"call {call.id} has no sid but is {call.status!r}")
        if connects_by_call.get(call.id, 0) > 1:
            problems.append(f"call {call.id} was sent to Exotel {connects_by_call[call.id]} times")
    by_status: dict[str, int] = {}
    for call in calls:
        by_status[call.status] = by_status.get(call.status, 0) + 1
    statuses = ", ".join(f"{n} {s}" for s, n in sorted(by_status.items()))
    report.add(
        f"stored calls: {len(calls)} ({statuses}); placed by the simulator: {len(placed)}; "
        f"connect requests: {len(connects)}"
    )
    report.add(
        "most placements for one request: "
        f"{max((len(s) for s in placed_by_to.values()), default=0)}; "
        f"problems: {len(problems)}"
    )
    return problems
