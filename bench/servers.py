"""What the bench and the fault suite run: Postgres databases and uvicorn servers.

Every server runs in a process of its own, started with `python -m bench.serve KIND`
and the same uvicorn settings as `callbridge serve`, so that what is measured is what
production runs, and so that a test may SIGKILL it.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal

import psutil  # type: ignore[import-untyped]
import psycopg
from psycopg import sql

from app.db import PROJECT_ROOT, migrate
from app.embedded import EmbeddedPostgres

ServerKind = Literal["callbridge", "reference", "read-reference", "place-reference", "simulator"]
LOCAL_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"
OUT_DIR = PROJECT_ROOT / "bench" / "out"

# The bench's own secrets, long enough for live mode's rules (32 bytes and more), and
# never used outside the bench's databases on loopback.
CALLBACK_SECRET = "bench-callback-secret-not-for-production-0123456789"  # noqa: S105
WRITER_KEY = "bench-writer-key-not-for-production-0123456789"
READER_KEY = "bench-reader-key-not-for-production-0123456789"
API_KEYS = f"bench:{WRITER_KEY}:write,dashboard:{READER_KEY}:read"
# A Standard Webhooks secret: whsec_ and the base64 of a 32-byte key.
NOTIFY_SECRET = "whsec_" + base64.b64encode(b"bench-notify-key-not-for-prod-32").decode()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def libpq_url(url: str) -> str:
    """A SQLAlchemy psycopg URL as psycopg itself takes it."""
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def sqlalchemy_url(url: str) -> str:
    return libpq_url(url).replace("postgresql://", "postgresql+psycopg://", 1)


def with_database(url: str, name: str) -> str:
    base, _, query = libpq_url(url).partition("?")
    base = base.rsplit("/", 1)[0] + "/" + name
    return f"{base}?{query}" if query else base


def _reachable(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=3):
            return True
    except psycopg.OperationalError:
        return False


def postgres_server(url: str | None) -> tuple[str, str]:
    """The Postgres server to use and how it was found: the URL given, the machine's, or
    an embedded one under .callbridge/bench."""
    if url:
        return libpq_url(url), "given"
    if _reachable(LOCAL_POSTGRES):
        return LOCAL_POSTGRES, "127.0.0.1:5432"
    server = EmbeddedPostgres(PROJECT_ROOT / ".callbridge" / "bench")
    embedded = server.start()
    atexit.register(server.stop)
    return libpq_url(embedded), "embedded"


def create_database(server_url: str, name: str, *, migrated: bool) -> str:
    """A new, empty database `name` on the server (dropped first if it exists)."""
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = with_database(server_url, name)
    if migrated:
        migrate(sqlalchemy_url(url))
    return url


def drop_database(server_url: str, name: str) -> None:
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def database_exists(server_url: str, name: str) -> bool:
    with psycopg.connect(server_url, autocommit=True) as conn:
        found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        return found is not None


@dataclass
class Server:
    """One uvicorn server in its own process, on 127.0.0.1:`port`."""

    kind: ServerKind
    env: Mapping[str, str]
    log_path: Path
    port: int = field(default_factory=free_port)
    # Whose code it runs: this checkout's, or another's (bench/compare.py).
    checkout: Path = PROJECT_ROOT
    process: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, *, timeout_s: float = 60.0) -> Server:
        """Start the process and wait until it accepts connections (uvicorn listens only
        once the application's lifespan startup is done)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        environment = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.serve", self.kind, "--port", str(self.port)],
            cwd=self.checkout,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout_s
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.kind} exited with {self.process.returncode} while starting; "
                    f"see {self.log_path}:\n{self.log_tail()}"
                )
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5),
            ):
                return self
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"{self.kind} did not listen within {timeout_s} s")
            time.sleep(0.05)

    def rss_bytes(self) -> int:
        return int(psutil.Process(self.pid).memory_info().rss)

    def cpu_seconds(self) -> float:
        """CPU time the server process has used so far, user and system."""
        times = psutil.Process(self.pid).cpu_times()
        return float(times.user + times.system)

    def stop(self, *, timeout_s: float = 15.0) -> None:
        """SIGTERM (uvicorn shuts down gracefully), SIGKILL if it lingers."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        self._close_log()

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as when a machine or container dies."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@contextlib.contextmanager
def running(server: Server) -> Iterator[Server]:
    server.start()
    try:
        yield server
    finally:
        server.stop()


def callbridge_env(
    database_url: str,
    *,
    exotel_url: str,
    public_base_url: str,
    **extra: str,
) -> dict[str, str]:
    """Environment for a Callbridge process in live mode against a simulator's URL: every
    setting live mode requires, given explicitly, secrets of full length."""
    from app.exotel.simulator import SimulatorConfig

    simulator = SimulatorConfig()
    return {
        "DATABASE_URL": sqlalchemy_url(database_url),
        "CALLBACK_SECRET": CALLBACK_SECRET,
        "NOTIFY_SECRET": NOTIFY_SECRET,
        "API_KEYS": API_KEYS,
        "EXOTEL_ACCOUNT_SID": simulator.account_sid,
        "EXOTEL_API_KEY": simulator.api_key,
        "EXOTEL_API_TOKEN": simulator.api_token,
        "EXOTEL_BASE_URL": exotel_url,
        "EXOTEL_CALLER_ID": "08047112233",
        "PUBLIC_BASE_URL": public_base_url,
        "LOG_FORMAT": "json",
        **{name.upper(): value for name, value in extra.items()},
    }
