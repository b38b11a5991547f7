"""Starting and stopping real processes: unusable settings end them with one line per problem
and exit status 2; the embedded Postgres of simulator mode ends with the process that started
it, however it ends, and one orphaned by a SIGKILL is taken care of at the next start."""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import app.main
from app.config import Settings
from app.db import PROJECT_ROOT
from tests.ops.test_shutdown import free_port

LEAKY_SECRET = "leaky-secret-value"


def clean_environment(**variables: str) -> dict[str, str]:
    """The test process' environment without any Callbridge setting, plus `variables`."""
    names = {name.upper() for name in Settings.model_fields}
    environment = {key: value for key, value in os.environ.items() if key.upper() not in names}
    return environment | {"PYTHONUNBUFFERED": "1"} | variables


def run_to_exit(*command: str, **variables: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603
        command,
        cwd=PROJECT_ROOT,
        env=clean_environment(**variables),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


CALLBRIDGE = (sys.executable, "-m", "app.cli")
UVICORN = (sys.executable, "-m", "uvicorn", "app.main:app", "--port", "1")


@pytest.mark.parametrize(
    "command",
    [(*CALLBRIDGE, "serve", "--port", "1"), (*CALLBRIDGE, "worker"), UVICORN],
    ids=["serve", "worker", "uvicorn"],
)
def test_unusable_settings_exit_2_with_one_json_line_per_problem(
    command: tuple[str, ...],
) -> None:
    finished = run_to_exit(
        *command,
        EXOTEL_ACCOUNT_SID="acme",
        EXOTEL_API_KEY="key",
        EXOTEL_API_TOKEN=LEAKY_SECRET,
        CALLBACK_SECRET=LEAKY_SECRET,
        API_KEYS=f"orders:{LEAKY_SECRET}:write",
    )

    assert finished.returncode == 2, finished.stderr
    # uvicorn run directly prints its own (plain) startup lines first.
    lines = [json.loads(line) for line in finished.stderr.splitlines() if line.startswith("{")]
    assert {line["event"] for line in lines} == {"config_error"}
    assert [line["variable"] for line in lines] == [
        "API_KEYS",
        "CALLBACK_SECRET",
        "DATABASE_URL",
        "EXOTEL_CALLER_ID",
        "NOTIFY_SECRET",
        "PUBLIC_BASE_URL",
    ]
    assert LEAKY_SECRET not in finished.stderr + finished.stdout


def test_nothing_configured_says_what_to_set_for_humans_in_simulator_style() -> None:
    finished = run_to_exit(*CALLBRIDGE, "serve", "--port", "1", LOG_FORMAT="console")

    assert finished.returncode == 2
    [line] = finished.stderr.strip().splitlines()
    assert "config_error" in line
    assert "CALLBRIDGE_SIMULATOR=true" in line


def test_open_access_is_refused_off_loopback() -> None:
    every_interface = "0.0.0.0"  # noqa: S104 - what is refused
    finished = run_to_exit(*CALLBRIDGE, "serve", "--simulator", "--host", every_interface)

    assert finished.returncode == 2
    assert "API_KEYS" in finished.stderr


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One data directory for the module, so its Postgres is initialised only once."""
    return tmp_path_factory.mktemp("serve")


def postgres_pids(data_dir: Path) -> list[int]:
    """Postmaster processes running on `data_dir`'s embedded Postgres."""
    pgdata = str((data_dir / "postgres").resolve())
    found = subprocess.run(
        ["ps", "-ww", "-eo", "pid=,args="],  # noqa: S607 - ps from PATH, as a person would
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [
        int(line.split()[0])
        for line in found.splitlines()
        if f"-D {pgdata} " in line + " " and "postgres" in line.split()[1]
    ]


class Served:
    def __init__(self, data_dir: Path) -> None:
        self.port = free_port()
        self.process = subprocess.Popen(  # noqa: S603
            [*CALLBRIDGE, "serve", "--simulator", "--port", str(self.port)],
            cwd=PROJECT_ROOT,
            env=clean_environment(
                CALLBRIDGE_DATA_DIR=str(data_dir),
                PUBLIC_BASE_URL=f"http://127.0.0.1:{self.port}",
                RUN_JOBS="false",
            ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def wait_until_ready(self) -> None:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert self.process.poll() is None, "callbridge serve exited"
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        pytest.fail("callbridge serve never became ready")

    def end(self, how: signal.Signals) -> None:
        self.process.send_signal(how)
        self.process.wait(timeout=60)


@pytest.fixture
def served(data_dir: Path) -> Iterator[Served]:
    started = Served(data_dir)
    yield started
    if started.process.poll() is None:
        started.process.kill()
        started.process.wait()
    # Whatever the test did, leave nothing running.
    for pid in postgres_pids(data_dir):
        os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGINT])
def test_ending_the_server_stops_its_embedded_postgres(
    served: Served, data_dir: Path, how: signal.Signals
) -> None:
    served.wait_until_ready()
    assert postgres_pids(data_dir)

    served.end(how)

    assert postgres_pids(data_dir) == []


def test_a_postgres_orphaned_by_sigkill_is_replaced_at_the_next_start(
    served: Served, data_dir: Path
) -> None:
    served.wait_until_ready()
    served.end(signal.SIGKILL)
    [orphan] = postgres_pids(data_dir)

    again = Served(data_dir)
    try:
        again.wait_until_ready()
        assert orphan not in postgres_pids(data_dir)
        again.end(signal.SIGTERM)
    finally:
        if again.process.poll() is None:
            again.process.kill()
    assert postgres_pids(data_dir) == []


async def test_a_failed_startup_stops_the_embedded_postgres_it_started(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_migration(_: str) -> None:
        assert postgres_pids(data_dir), "the embedded Postgres should be up by now"
        raise RuntimeError("migration failed")

    monkeypatch.setattr(app.main, "migrate", broken_migration)
    settings = Settings(
        _env_file=None, callbridge_simulator=True, callbridge_data_dir=data_dir, run_jobs=False
    )
    application = app.main.create_app(settings)

    with pytest.raises(RuntimeError, match="migration failed"):
        async with application.router.lifespan_context(application):
            pytest.fail("started although the migration failed")

    assert postgres_pids(data_dir) == []


def test_the_worker_serves_no_api_so_it_warns_of_no_open_access(
    database_url: str, tmp_path: Path
) -> None:
    worker = subprocess.Popen(  # noqa: S603
        [*CALLBRIDGE, "worker"],
        cwd=PROJECT_ROOT,
        env=clean_environment(
            CALLBRIDGE_SIMULATOR="true",
            DATABASE_URL=database_url,
            CALLBRIDGE_DATA_DIR=str(tmp_path),
            LOG_FORMAT="json",
        ),
        stderr=subprocess.PIPE,
        text=True,
    )
    assert worker.stderr is not None
    try:
        lines = []
        for line in worker.stderr:
            lines.append(line)
            if '"worker_started"' in line:
                break
    finally:
        worker.terminate()
        worker.communicate(timeout=30)

    assert any('"worker_started"' in line for line in lines), lines
    assert not any("OPEN ACCESS" in line for line in lines)


class _Receiver(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *_: object) -> None:
        pass


def test_the_standalone_simulator_logs_no_callback_url() -> None:
    receiver = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    token = "0123456789abcdef" * 4
    callback = f"http://127.0.0.1:{receiver.server_address[1]}/callbacks/exotel?token={token}"
    port = free_port()
    simulator = subprocess.Popen(  # noqa: S603
        [*CALLBRIDGE, "simulate", "--port", str(port), "--speed", "1000"],
        cwd=PROJECT_ROOT,
        env=clean_environment(),
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}/v1/Accounts/callbridge-sim/Calls"
        deadline = time.monotonic() + 30
        while True:
            try:
                placed = httpx.post(
                    f"{base}/connect.json",
                    auth=("sim-key", "sim-token"),
                    data={
                        "From": "+919876543210",
                        "To": "+919123456789",
                        "CallerId": "08000000000",
                        "StatusCallback": callback,
                    },
                )
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the simulator never answered"
                time.sleep(0.2)
        assert placed.status_code == 200
        sid = placed.json()["Call"]["Sid"]
        while httpx.get(f"{base}/{sid}.json", auth=("sim-key", "sim-token")).json()["Call"][
            "Status"
        ] not in ("completed", "failed", "busy", "no-answer"):
            assert time.monotonic() < deadline, "the simulated call never ended"
            time.sleep(0.2)
        time.sleep(0.5)  # the terminal callback is posted after the status changes
    finally:
        simulator.terminate()
        output, errors = simulator.communicate(timeout=30)
        receiver.shutdown()
        receiver.server_close()

    assert "connect to" in output + errors, "the simulator's own log is kept"
    assert token not in output + errors
