"""Settings, read from the environment (see the README's configuration table).

Two modes, never guessed: live (all three Exotel credentials) or simulator (asked for
with CALLBRIDGE_SIMULATOR=true or `callbridge serve --simulator`). Live mode refuses to
start without what production needs; a problem is reported as one line naming the
variable and the rule it breaks, never its value (`ConfigError.problems`).
"""

from __future__ import annotations

import base64
import binascii
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import structlog
from pydantic import (
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.logs import configure_logging

EXOTEL_REGION_HOSTS = {"singapore": "https://api.exotel.com", "mumbai": "https://api.in.exotel.com"}
EXOTEL_CREDENTIALS = ("EXOTEL_ACCOUNT_SID", "EXOTEL_API_KEY", "EXOTEL_API_TOKEN")
# Variables whose empty value means something ("no API keys", "no allowed hosts"); any
# other variable set to an empty string is a mistake (a secret that was not injected).
MAY_BE_EMPTY = frozenset({"api_keys", "notify_allowed_hosts"})
MIN_SECRET_BYTES = 32
# Exit status for unusable settings (the conventional "usage error"), so a supervisor
# can tell "fix the configuration" from a crash.
CONFIG_ERROR_EXIT = 2
DEFAULT_PUBLIC_BASE_URL = "http://127.0.0.1:8000"
# What simulator mode changes when the variable is not set: its clock runs ten times
# faster, so the reconciler and the details lookups must come sooner to be seen at all
# (scenario 9913 settles within a minute), and there is an ExoPhone to call from.
SIMULATOR_DEFAULTS: dict[str, Any] = {
    "exotel_caller_id": "08000000000",
    "reconcile_after_s": 20,
    "reconcile_interval_s": 5,
    "details_after_s": 20,
}

Role = Literal["write", "read"]


def _random_token() -> str:
    return secrets.token_urlsafe(32)


@dataclass(frozen=True)
class ApiClient:
    name: str
    role: Role


class ConfigError(Exception):
    """The settings cannot be used; `problems` holds one line per problem, without values."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def _variable(name: str) -> str:
    return name.upper()


def config_problems(error: ValidationError) -> list[str]:
    """One line per problem, `VARIABLE: rule`, never the offending value."""
    problems = []
    for detail in error.errors(include_input=False, include_url=False):
        message = str(detail["msg"]).removeprefix("Value error, ")
        if detail["loc"]:
            problems.append(f"{_variable(str(detail['loc'][0]))}: {message}")
        else:
            # Whole-settings rules report several lines at once, each naming its variable.
            problems.extend(line for line in message.splitlines() if line)
    return problems


def _is_http_url(value: str) -> bool:
    try:
        parts = urlsplit(value)
        port_ok = parts.port is None or 0 < parts.port < 65536
    except ValueError:
        return False
    return (
        parts.scheme in ("http", "https")
        and bool(parts.hostname)
        and port_ok
        and not any(character.isspace() for character in value)
        and not parts.query
        and not parts.fragment
    )


def _webhook_key_bytes(secret: str) -> int | None:
    """Length of a Standard Webhooks key (`whsec_` + base64), None if it is not one."""
    if not secret.startswith("whsec_"):
        return None
    try:
        return len(base64.b64decode(secret.removeprefix("whsec_"), validate=True))
    except (binascii.Error, ValueError):
        return None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", extra="ignore", case_sensitive=False, env_ignore_empty=False
    )

    database_url: str | None = None
    database_wait_s: float = Field(30, ge=0)
    callbridge_data_dir: Path = Path(".callbridge")
    callbridge_simulator: bool = False

    exotel_account_sid: str | None = None
    exotel_api_key: str | None = None
    exotel_api_token: SecretStr | None = None
    exotel_region: Literal["singapore", "mumbai"] = "singapore"
    exotel_base_url: str | None = None
    exotel_caller_id: str | None = None
    exotel_requests_per_minute: int = Field(200, ge=1)
    exotel_timeout_s: float = Field(10.0, gt=0)

    public_base_url: str = DEFAULT_PUBLIC_BASE_URL
    callback_secret: SecretStr | None = None
    api_keys: SecretStr = SecretStr("")
    default_country: str = "IN"
    notify_secret: SecretStr | None = None
    # Comma-separated hosts a notify_url may name although they are not public, spelled
    # exactly as in the URL (see app/notify_targets.py).
    notify_allowed_hosts: Annotated[frozenset[str], NoDecode] = frozenset()

    reconcile_after_s: float = Field(900, gt=0)
    reconcile_interval_s: float = Field(60, gt=0)
    reconcile_unknown_grace_s: float = Field(600, gt=0)
    reconcile_give_up_s: float = Field(86400, gt=0)
    details_after_s: float = Field(180, gt=0)
    notify_poll_interval_s: float = Field(0.5, gt=0)
    notify_timeout_s: float = Field(10.0, gt=0)
    notify_first_retry_s: float = Field(5.0, gt=0)
    notify_give_up_s: float = Field(86400, gt=0)
    run_jobs: bool = True
    # Where `callbridge worker` serves /healthz, /readyz and /metrics.
    worker_port: int = Field(9100, ge=0, le=65535)

    calls_per_minute_per_client: int = Field(600, ge=1)
    # Unset: JSON lines in live mode, a readable console format in simulator mode.
    log_format: Literal["json", "console"] | None = None
    log_level: str = "INFO"

    _clients: dict[str, tuple[ApiClient, str]] = PrivateAttr(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _refuse_empty_values(cls, data: Any) -> Any:
        if isinstance(data, dict):
            empty = sorted(
                _variable(str(name))
                for name, value in data.items()
                if isinstance(value, str) and not value.strip() and name not in MAY_BE_EMPTY
            )
            if empty:
                raise ValueError(
                    "\n".join(
                        f"{name}: is set but empty; give it a value or unset it" for name in empty
                    )
                )
        return data

    @field_validator("database_url")
    @classmethod
    def _normalise_database_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        for prefix in ("postgres://", "postgresql://"):
            if value.startswith(prefix):
                return "postgresql+psycopg://" + value.removeprefix(prefix)
        return value

    @field_validator("public_base_url", "exotel_base_url")
    @classmethod
    def _strip_trailing_slash(cls, value: str | None) -> str | None:
        return value.rstrip("/") if value else value

    @field_validator("notify_allowed_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: object) -> object:
        if isinstance(value, str):
            hosts = (host.strip().lower() for host in value.split(","))
            # IPv6 addresses without their URL brackets, as the relay's connections see them.
            return frozenset(host.strip("[]") for host in hosts if host)
        return value

    @field_validator("default_country")
    @classmethod
    def _upper_country(cls, value: str) -> str:
        return value.upper()

    @model_validator(mode="after")
    def _check_the_mode(self) -> Settings:
        problems = self._mode_problems()
        problems += self._api_key_problems()
        problems += self._secret_problems()
        if self.live:
            problems += self._live_problems()
        elif self.callbridge_simulator:
            for name, value in SIMULATOR_DEFAULTS.items():
                if name not in self.model_fields_set:
                    setattr(self, name, value)
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def _mode_problems(self) -> list[str]:
        values = (self.exotel_account_sid, self.exotel_api_key, self.exotel_api_token)
        missing = [
            name for name, value in zip(EXOTEL_CREDENTIALS, values, strict=True) if not value
        ]
        if 0 < len(missing) < len(EXOTEL_CREDENTIALS):
            return [
                f"{name}: required with the other Exotel credentials "
                "(set all three for live mode, or none and CALLBRIDGE_SIMULATOR=true)"
                for name in missing
            ]
        if self.live and self.callbridge_simulator:
            return [
                "CALLBRIDGE_SIMULATOR: cannot be true while Exotel credentials are set; "
                "choose live mode or the simulator"
            ]
        if not self.live and not self.callbridge_simulator:
            return [
                "EXOTEL_ACCOUNT_SID: neither Exotel credentials nor the simulator are configured; "
                "set EXOTEL_ACCOUNT_SID, EXOTEL_API_KEY and EXOTEL_API_TOKEN for live mode, "
                "or CALLBRIDGE_SIMULATOR=true (`callbridge serve --simulator`) to simulate calls"
            ]
        return []

    def _api_key_problems(self) -> list[str]:
        problems = []
        clients: dict[str, tuple[ApiClient, str]] = {}
        seen_secrets: set[str] = set()
        entries = [entry.strip() for entry in self.api_keys.get_secret_value().split(",")]
        for position, entry in enumerate((entry for entry in entries if entry), start=1):
            parts = entry.split(":")
            if len(parts) != 3 or parts[2] not in ("write", "read") or not all(parts):
                problems.append(
                    f"API_KEYS: entry {position} must look like client:secret:role (write|read)"
                )
                continue
            name, secret, role = parts
            if len(secret) < MIN_SECRET_BYTES:
                problems.append(
                    f"API_KEYS: the secret of client {name!r} must be at least "
                    f"{MIN_SECRET_BYTES} characters"
                )
            if name in clients:
                problems.append(f"API_KEYS: client {name!r} appears more than once")
            if secret in seen_secrets:
                problems.append(f"API_KEYS: client {name!r} shares its secret with another client")
            seen_secrets.add(secret)
            clients[name] = (ApiClient(name=name, role=role), secret)  # type: ignore[arg-type]
        self._clients = clients
        return problems

    def _secret_problems(self) -> list[str]:
        problems = []
        if (
            self.callback_secret is not None
            and len(self.callback_secret.get_secret_value().strip().encode()) < MIN_SECRET_BYTES
        ):
            problems.append(f"CALLBACK_SECRET: must be at least {MIN_SECRET_BYTES} bytes")
        if self.notify_secret is not None:
            key_bytes = _webhook_key_bytes(self.notify_secret.get_secret_value())
            if key_bytes is None:
                problems.append(
                    "NOTIFY_SECRET: must be a Standard Webhooks secret (whsec_ then base64)"
                )
            elif key_bytes < MIN_SECRET_BYTES:
                problems.append(
                    f"NOTIFY_SECRET: the key after whsec_ must be at least {MIN_SECRET_BYTES} bytes"
                )
        return problems

    def _live_problems(self) -> list[str]:
        required = {
            "DATABASE_URL": self.database_url,
            "EXOTEL_CALLER_ID": self.exotel_caller_id,
            "CALLBACK_SECRET": self.callback_secret,
            "NOTIFY_SECRET": self.notify_secret,
        }
        problems = [
            f"{name}: required in live mode (Exotel credentials are set)"
            for name, value in required.items()
            if value is None
        ]
        if not self._clients:
            problems.append("API_KEYS: required in live mode (Exotel credentials are set)")
        if "public_base_url" not in self.model_fields_set:
            problems.append(
                "PUBLIC_BASE_URL: required in live mode: the https address Exotel posts "
                "callbacks to"
            )
        elif not _is_http_url(self.public_base_url):
            problems.append("PUBLIC_BASE_URL: must be an http(s) URL (scheme and host, no query)")
        return problems

    @property
    def live(self) -> bool:
        """True when real Exotel credentials are configured; otherwise calls are simulated."""
        return bool(self.exotel_account_sid and self.exotel_api_key and self.exotel_api_token)

    @property
    def details_after(self) -> timedelta:
        """How long after a call's end its figures are first looked for (DETAILS_AFTER_S)."""
        return timedelta(seconds=self.details_after_s)

    @property
    def json_logs(self) -> bool:
        return (self.log_format or ("json" if self.live else "console")) == "json"

    @property
    def exotel_host(self) -> str:
        return self.exotel_base_url or EXOTEL_REGION_HOSTS[self.exotel_region]

    @property
    def api_clients(self) -> dict[str, tuple[ApiClient, str]]:
        """API clients by name, with their secret; parsed from `client:secret:role,...`."""
        return self._clients

    def dev_secret(self, name: str, generate: Callable[[], str] = _random_token) -> str:
        """A secret generated once and kept in the data directory, for one left unconfigured."""
        path = self.callbridge_data_dir / "secrets" / name
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(generate())
            path.chmod(0o600)
        return path.read_text().strip()


class _LogFormat(BaseSettings):
    """Just enough of the settings to report that the others are unusable, in the right format."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", case_sensitive=False)

    log_format: str | None = None
    callbridge_simulator: str | None = None


def config_errors_as_json() -> bool:
    """Whether config errors are written as JSON lines: as LOG_FORMAT says, else JSON unless
    the simulator is asked for (the same default as Settings.json_logs)."""
    try:
        raw = _LogFormat()
    except ValidationError:
        return True
    if raw.log_format in ("json", "console"):
        return raw.log_format == "json"
    return (raw.callbridge_simulator or "").strip().lower() not in ("true", "1", "yes", "on")


def report_config_error(error: ConfigError) -> None:
    """One line per problem (JSON when JSON logs are on), naming the variable, never its value."""
    configure_logging(json_format=config_errors_as_json())
    log = structlog.get_logger("app.config")
    for problem in error.problems:
        variable, _, rule = problem.partition(": ")
        log.error("config_error", variable=variable, problem=rule)


def load_settings(**values: Any) -> Settings:
    """Settings from the environment (and `values`); ConfigError when they are unusable."""
    try:
        return Settings(**values)
    except ValidationError as error:
        raise ConfigError(config_problems(error)) from None


@lru_cache
def get_settings() -> Settings:
    return load_settings()
