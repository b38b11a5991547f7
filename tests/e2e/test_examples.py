"""Every example a newcomer is shown is true: the README's commands and the request examples
of /docs, run against Callbridge in simulator mode (and the standalone simulator recipe
against real processes)."""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.config import Settings
from app.db import PROJECT_ROOT
from app.main import create_app
from tests.e2e.conftest import free_port, serving
from tests.ops.test_startup import clean_environment

README = (PROJECT_ROOT / "README.md").read_text()
README_SERVICE = "http://127.0.0.1:8000"
README_SID = "9c2d6..."
# Top-level `"name": value` pairs shown in an answer.
_SHOWN_PAIR = re.compile(r'"(\w+)": ("[^"]*"|-?\d+(?:\.\d+)?|null|true|false)')


@dataclass
class Command:
    words: list[str]
    shown: str  # the answer printed under it, "" if none


@dataclass
class Curl:
    method: str = "GET"
    url: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    data: str | None = None


def console_commands(heading: str) -> list[Command]:
    """The `$ ` commands of the first console block under `heading`, with their answers."""
    section = README.split(heading, 1)[1]
    block = section.split("```console\n", 1)[1].split("```", 1)[0]
    commands: list[Command] = []
    lines = iter(block.splitlines())
    for line in lines:
        if line.startswith("$ "):
            text = line[2:]
            while text.endswith("\\"):
                text = text[:-1] + next(lines)
            lexer = shlex.shlex(text, posix=True)
            lexer.whitespace_split = True
            lexer.commenters = "#"
            commands.append(Command(list(lexer), ""))
        elif line.strip() and commands:
            commands[-1].shown += line + "\n"
    return commands


def parse_curl(words: list[str]) -> Curl:
    assert words[0] == "curl"
    curl, rest = Curl(), iter(words[1:])
    for word in rest:
        if word == "-X":
            curl.method = next(rest)
        elif word == "-H":
            name, _, value = next(rest).partition(": ")
            curl.headers[name] = value
        elif word == "-d":
            curl.data = next(rest)
            curl.method = "POST" if curl.method == "GET" else curl.method
        elif not word.startswith("-"):
            curl.url = word
    return curl


def assert_shows(shown: str, answer: dict[str, Any]) -> None:
    """The answer has every top-level field shown, with the value shown unless elided."""
    for name, text in _SHOWN_PAIR.findall(shown.split('"legs"')[0]):
        assert name in answer, name
        value = json.loads(text)
        if isinstance(value, str) and "..." not in value:
            assert answer[name] == value, name
        elif isinstance(value, int | float) and not isinstance(value, bool):
            assert isinstance(answer[name], int | float), name


async def run(http: httpx.AsyncClient, curl: Curl, base: str, sid: str = README_SID) -> Any:
    url = curl.url.replace(README_SERVICE, base).replace(README_SID, sid)
    response = await http.request(curl.method, url, headers=curl.headers, content=curl.data)
    assert response.status_code < 300, response.text
    return response.json()


async def until_shown(
    http: httpx.AsyncClient, curl: Curl, base: str, sid: str, shown: str
) -> dict[str, Any]:
    """Poll what the README shows "a few seconds later" (callbacks are applied async)."""
    async with asyncio.timeout(60):
        while True:
            answer: dict[str, Any] = await run(http, curl, base, sid)
            try:
                assert_shows(shown, answer)
                return answer
            except AssertionError:
                await asyncio.sleep(0.5)


@pytest.fixture
async def simulated(database_url: str, tmp_path: Path) -> AsyncIterator[str]:
    """Callbridge as `scripts/serve` runs it (simulator mode, open access), on a free port."""
    port = free_port()
    settings = Settings(
        _env_file=None,
        callbridge_simulator=True,
        database_url=database_url,
        callbridge_data_dir=tmp_path,
        public_base_url=f"http://127.0.0.1:{port}",
        log_format="console",
    )
    async with serving(create_app(settings), port):
        yield f"http://127.0.0.1:{port}"


async def test_the_readme_first_call_is_true(simulated: str) -> None:
    place, *reads, events = (
        command for command in console_commands("### Your first call") if command.words[0] == "curl"
    )
    async with httpx.AsyncClient(timeout=10) as http:
        placed = await run(http, parse_curl(place.words), simulated)
        assert_shows(place.shown, placed)

        # Finished, then with the price and duration Exotel fills in later.
        finished, with_figures = [
            await until_shown(http, parse_curl(read.words), simulated, placed["sid"], read.shown)
            for read in reads
        ]
        received = await run(http, parse_curl(events.words), simulated, placed["sid"])

    assert finished["legs"][0]["status"] == "completed"
    assert with_figures["price"] is not None
    assert received


async def test_every_request_example_in_the_docs_places_a_call(simulated: str) -> None:
    async with httpx.AsyncClient(base_url=simulated, timeout=10) as http:
        document = (await http.get("/openapi.json")).json()
        examples = document["paths"]["/calls"]["post"]["requestBody"]["content"][
            "application/json"
        ]["examples"]
        bodies = {name: example["value"] for name, example in examples.items()}
        for number, body in enumerate(document["components"]["schemas"]["CallCreate"]["examples"]):
            bodies[f"schema example {number}"] = body
        assert len(bodies) >= 3
        for name, body in bodies.items():
            assert "notify_url" not in body, f"{name}: a day of failed deliveries if tried"
            response = await http.post("/calls", json=body)
            assert response.status_code == 201, (name, response.text)


@dataclass
class Process:
    process: subprocess.Popen[bytes]
    base: str


@pytest.fixture
def recipe_processes(database_url: str, tmp_path: Path) -> Iterator[tuple[Process, Process]]:
    """The README's standalone simulator recipe, run as written (ports and database aside)."""
    simulate, serve = [
        command.words for command in console_commands("### The simulator on its own port")
    ][:2]
    simulator_port, service_port = free_port(), free_port()
    assert simulate[:2] == [".venv/bin/callbridge", "simulate"]
    assert serve[0] == "env"
    variables = dict(word.split("=", 1) for word in serve[1:] if "=" in word)
    variables["DATABASE_URL"] = database_url
    for name, value in variables.items():
        variables[name] = value.replace(":9911", f":{simulator_port}").replace(
            ":8000", f":{service_port}"
        )
    variables["CALLBRIDGE_DATA_DIR"] = str(tmp_path)
    started = []
    for arguments, environment in (
        (["simulate", "--port", str(simulator_port)], clean_environment()),
        (["serve", "--port", str(service_port)], clean_environment(**variables)),
    ):
        started.append(
            subprocess.Popen(  # noqa: S603
                [sys.executable, "-m", "app.cli", *arguments],
                cwd=PROJECT_ROOT,
                env=environment,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    try:
        yield (
            Process(started[0], f"http://127.0.0.1:{simulator_port}"),
            Process(started[1], f"http://127.0.0.1:{service_port}"),
        )
    finally:
        for process in started:
            process.terminate()
            process.wait(timeout=30)


async def test_the_standalone_simulator_recipe_works(
    recipe_processes: tuple[Process, Process],
) -> None:
    _, service = recipe_processes
    [place] = (
        command
        for command in console_commands("### The simulator on its own port")
        if command.words[0] == "curl"
    )
    curl = parse_curl(place.words)
    async with httpx.AsyncClient(timeout=10) as http:
        async with asyncio.timeout(60):
            while True:
                assert service.process.poll() is None, "callbridge serve exited"
                try:
                    if (await http.get(f"{service.base}/readyz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.2)
        placed = await run(http, curl, service.base)
        assert_shows(place.shown, placed)
        read = Curl(url=f"{README_SERVICE}/calls/{README_SID}", headers=curl.headers)
        await until_shown(http, read, service.base, placed["sid"], '"status": "completed"')
