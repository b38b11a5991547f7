"""Settings refuse a half configuration, naming what is missing."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from app.config import Settings

LIVE = {
    "exotel_account_sid": "acme",
    "exotel_api_key": "key",
    "exotel_api_token": "token",
    "callback_secret": "s3cret",
    "api_keys": "orders:abc:write",
}


def settings(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)


@pytest.mark.parametrize("missing", ["exotel_account_sid", "exotel_api_key", "exotel_api_token"])
def test_half_configured_exotel_names_the_missing_variable(missing: str) -> None:
    values = {key: value for key, value in LIVE.items() if key != missing}
    with pytest.raises(ValidationError, match=missing.upper()):
        settings(**values)


@pytest.mark.parametrize("missing", ["callback_secret", "api_keys"])
def test_live_mode_needs_callback_secret_and_api_keys(missing: str) -> None:
    values = {key: value for key, value in LIVE.items() if key != missing}
    with pytest.raises(ValidationError, match=missing.upper()):
        settings(**values)


def test_nothing_configured_is_simulator_mode() -> None:
    configured = settings()
    assert not configured.live
    assert configured.api_clients == {}


def test_empty_environment_values_count_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("EXOTEL_ACCOUNT_SID", "EXOTEL_API_KEY", "EXOTEL_API_TOKEN", "DATABASE_URL"):
        monkeypatch.setenv(name, "")
    configured = settings()
    assert not configured.live
    assert configured.database_url is None


@pytest.mark.parametrize("scheme", ["postgres://", "postgresql://"])
def test_database_url_is_normalised_to_psycopg(scheme: str) -> None:
    configured = settings(database_url=f"{scheme}u:p@db:5432/callbridge")
    assert configured.database_url == "postgresql+psycopg://u:p@db:5432/callbridge"


def test_exotel_host_by_region_and_override() -> None:
    assert settings(**LIVE).exotel_host == "https://api.exotel.com"
    assert settings(**LIVE, exotel_region="mumbai").exotel_host == "https://api.in.exotel.com"
    override = settings(**LIVE, exotel_region="mumbai", exotel_base_url="http://127.0.0.1:9911/")
    assert override.exotel_host == "http://127.0.0.1:9911"


def test_api_keys_parse_with_roles() -> None:
    configured = settings(api_keys="orders:abc:write, dashboard:def:read")
    assert {name: client.role for name, (client, _) in configured.api_clients.items()} == {
        "orders": "write",
        "dashboard": "read",
    }


@pytest.mark.parametrize("entry", ["orders:abc", "orders:abc:admin", ":abc:read"])
def test_malformed_api_keys_are_refused(entry: str) -> None:
    with pytest.raises(ValidationError, match="client:secret:role"):
        settings(api_keys=entry)


def test_notify_secret_must_be_a_standard_webhooks_secret() -> None:
    with pytest.raises(ValidationError, match="whsec_"):
        settings(notify_secret="plain")


def test_logs_are_json_when_live_and_readable_in_simulator_mode() -> None:
    assert settings(**LIVE).json_logs
    assert not settings().json_logs
    assert settings(log_format="json").json_logs
    assert not settings(**LIVE, log_format="console").json_logs
