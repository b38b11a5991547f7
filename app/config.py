"""Settings, read from the environment (see the README's configuration table)."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.exotel.simulator.config import SimulatorConfig

EXOTEL_REGION_HOSTS = {"singapore": "https://api.exotel.com", "mumbai": "https://api.in.exotel.com"}
EXOTEL_CREDENTIALS = ("EXOTEL_ACCOUNT_SID", "EXOTEL_API_KEY", "EXOTEL_API_TOKEN")

Role = Literal["write", "read"]


def _random_token() -> str:
    return secrets.token_urlsafe(32)


@dataclass(frozen=True)
class ApiClient:
    name: str
    role: Role


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", extra="ignore", case_sensitive=False, env_ignore_empty=True
    )

    database_url: str | None = None
    database_wait_s: float = Field(30, ge=0)
    callbridge_data_dir: Path = Path(".callbridge")

    exotel_account_sid: str | None = None
    exotel_api_key: str | None = None
    exotel_api_token: SecretStr | None = None
    exotel_region: Literal["singapore", "mumbai"] = "singapore"
    exotel_base_url: str | None = None
    exotel_caller_id: str | None = None
    exotel_requests_per_minute: int = Field(180, ge=1, le=200)
    exotel_timeout_s: float = Field(10.0, gt=0)

    public_base_url: str = "http://127.0.0.1:8000"
    callback_secret: SecretStr | None = None
    api_keys: SecretStr = SecretStr("")
    default_country: str = "IN"
    notify_secret: SecretStr | None = None

    reconcile_after_s: int = Field(900, ge=1)
    reconcile_interval_s: float = Field(60, gt=0)
    reconcile_unknown_grace_s: float = Field(600, gt=0)
    reconcile_give_up_s: float = Field(86400, gt=0)
    # In Exotel's time: the simulator plays calls faster, and its figures come sooner.
    details_after_s: float = Field(180, gt=0)
    notify_poll_interval_s: float = Field(0.5, gt=0)
    notify_timeout_s: float = Field(10.0, gt=0)
    notify_first_retry_s: float = Field(5.0, gt=0)
    notify_give_up_s: float = Field(86400, gt=0)
    run_jobs: bool = True

    calls_per_minute_per_client: int = Field(600, ge=1)
    # Unset: JSON lines in live mode, a readable console format in simulator mode.
    log_format: Literal["json", "console"] | None = None
    log_level: str = "INFO"

    @field_validator("database_url")
    @classmethod
    def _normalise_database_url(cls, value: str | None) -> str | None:
        if not value:
            return None
        for prefix in ("postgres://", "postgresql://"):
            if value.startswith(prefix):
                return "postgresql+psycopg://" + value.removeprefix(prefix)
        return value

    @field_validator("public_base_url", "exotel_base_url")
    @classmethod
    def _strip_trailing_slash(cls, value: str | None) -> str | None:
        return value.rstrip("/") if value else value

    @field_validator("default_country")
    @classmethod
    def _upper_country(cls, value: str) -> str:
        return value.upper()

    @model_validator(mode="after")
    def _refuse_half_configuration(self) -> Settings:
        values = (self.exotel_account_sid, self.exotel_api_key, self.exotel_api_token)
        missing = [
            name for name, value in zip(EXOTEL_CREDENTIALS, values, strict=True) if not value
        ]
        if 0 < len(missing) < len(EXOTEL_CREDENTIALS):
            raise ValueError(
                f"Exotel is half configured: set {', '.join(missing)} too, "
                "or unset all three to run with the simulator"
            )
        clients = self.api_clients
        if self.live:
            if self.callback_secret is None or not self.callback_secret.get_secret_value():
                raise ValueError("CALLBACK_SECRET is required when Exotel credentials are set")
            if not clients:
                raise ValueError("API_KEYS is required when Exotel credentials are set")
        if self.notify_secret is not None and not self.notify_secret.get_secret_value().startswith(
            "whsec_"
        ):
            raise ValueError("NOTIFY_SECRET must be a Standard Webhooks secret (whsec_...)")
        return self

    @property
    def live(self) -> bool:
        """True when real Exotel credentials are configured; otherwise calls are simulated."""
        return bool(self.exotel_account_sid)

    @property
    def details_after(self) -> timedelta:
        """How long after a call's end its figures are first looked for: DETAILS_AFTER_S,
        on the simulator's compressed clock in simulator mode."""
        speed = 1.0 if self.live else SimulatorConfig.speed
        return timedelta(seconds=self.details_after_s / speed)

    @property
    def json_logs(self) -> bool:
        return (self.log_format or ("json" if self.live else "console")) == "json"

    @property
    def exotel_host(self) -> str:
        return self.exotel_base_url or EXOTEL_REGION_HOSTS[self.exotel_region]

    @property
    def api_clients(self) -> dict[str, tuple[ApiClient, str]]:
        """API clients by name, with their secret; parsed from `client:secret:role,...`."""
        clients: dict[str, tuple[ApiClient, str]] = {}
        for entry in self.api_keys.get_secret_value().split(","):
            if not entry.strip():
                continue
            parts = entry.strip().split(":")
            if len(parts) != 3 or parts[2] not in ("write", "read") or not all(parts):
                raise ValueError("API_KEYS entries must look like client:secret:role (write|read)")
            name, secret, role = parts
            clients[name] = (ApiClient(name=name, role=role), secret)  # type: ignore[arg-type]
        return clients

    def dev_secret(self, name: str, generate: Callable[[], str] = _random_token) -> str:
        """A secret generated once and kept in the data directory, for one left unconfigured."""
        path = self.callbridge_data_dir / "secrets" / name
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(generate())
            path.chmod(0o600)
        return path.read_text().strip()


@lru_cache
def get_settings() -> Settings:
    return Settings()
