"""Settings: a mode is never guessed, live mode has what production needs, and every problem
is reported as one line naming the variable and the rule, never the value."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from app.config import ConfigError, Settings, load_settings

CALLBACK_SECRET = "c" * 32
NOTIFY_SECRET = "whsec_" + "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
WRITER = "orders:" + "w" * 32 + ":write"
LIVE = {
    "exotel_account_sid": "acme",
    "exotel_api_key": "key",
    "exotel_api_token": "token",
    "exotel_caller_id": "08047112233",
    "database_url": "postgresql://u:p@db/callbridge",
    "public_base_url": "https://callbridge.example.com",
    "callback_secret": CALLBACK_SECRET,
    "notify_secret": NOTIFY_SECRET,
    "api_keys": WRITER,
}
SIMULATOR = {"callbridge_simulator": True}


def settings(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)


def problems(**values: Any) -> list[str]:
    with pytest.raises(ConfigError) as raised:
        load_settings(_env_file=None, **values)
    return raised.value.problems


def without(name: str) -> dict[str, Any]:
    return {key: value for key, value in LIVE.items() if key != name}


def test_live_settings_are_accepted() -> None:
    configured = settings(**LIVE)
    assert configured.live
    assert configured.database_url == "postgresql+psycopg://u:p@db/callbridge"


@pytest.mark.parametrize("missing", ["exotel_account_sid", "exotel_api_key", "exotel_api_token"])
def test_half_configured_exotel_names_the_missing_variable(missing: str) -> None:
    [problem] = problems(**without(missing))
    assert problem.startswith(f"{missing.upper()}: required with the other Exotel credentials")


@pytest.mark.parametrize(
    "missing",
    [
        "database_url",
        "exotel_caller_id",
        "callback_secret",
        "notify_secret",
        "api_keys",
        "public_base_url",
    ],
)
def test_live_mode_refuses_to_start_without_what_it_needs(missing: str) -> None:
    [problem] = problems(**without(missing))
    assert problem.startswith(f"{missing.upper()}: required in live mode")


def test_nothing_configured_refuses_to_start_saying_what_to_set() -> None:
    [problem] = problems()
    assert "EXOTEL_ACCOUNT_SID, EXOTEL_API_KEY and EXOTEL_API_TOKEN" in problem
    assert "CALLBRIDGE_SIMULATOR=true" in problem


def test_simulator_mode_is_only_what_was_asked_for() -> None:
    configured = settings(**SIMULATOR)
    assert not configured.live
    assert configured.api_clients == {}
    assert configured.public_base_url == "http://127.0.0.1:8000"
    [problem] = problems(**LIVE, callbridge_simulator=True)
    assert problem.startswith("CALLBRIDGE_SIMULATOR: cannot be true")


def test_simulator_mode_has_an_exophone_and_timings_for_its_fast_clock() -> None:
    simulated = settings(**SIMULATOR)
    assert simulated.exotel_caller_id == "08000000000"
    assert simulated.reconcile_after_s <= 30
    assert simulated.details_after_s <= 30
    live = settings(**LIVE)
    assert (live.reconcile_after_s, live.reconcile_interval_s, live.details_after_s) == (
        900,
        60,
        180,
    )
    chosen = settings(**SIMULATOR, reconcile_after_s=100, exotel_caller_id="08047112233")
    assert (chosen.reconcile_after_s, chosen.exotel_caller_id) == (100, "08047112233")


def test_empty_variables_are_errors_not_simulator_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    # Secrets that were not injected: the service must not start open in simulator mode.
    for name in ("EXOTEL_ACCOUNT_SID", "EXOTEL_API_KEY", "EXOTEL_API_TOKEN", "DATABASE_URL"):
        monkeypatch.setenv(name, "")
    monkeypatch.setenv("API_KEYS", "")
    found = problems()
    assert found == [
        f"{name}: is set but empty; give it a value or unset it"
        for name in ("DATABASE_URL", "EXOTEL_ACCOUNT_SID", "EXOTEL_API_KEY", "EXOTEL_API_TOKEN")
    ]


@pytest.mark.parametrize(
    ("secret", "rule"),
    [(" ", "is set but empty"), ("x", "must be at least 32"), ("s" * 31, "must be at least 32")],
)
def test_short_callback_secret_is_refused(secret: str, rule: str) -> None:
    [problem] = problems(**LIVE | {"callback_secret": secret})
    assert problem.startswith(f"CALLBACK_SECRET: {rule}")


@pytest.mark.parametrize(
    ("secret", "rule"),
    [
        ("plain", "must be a Standard Webhooks secret"),
        ("whsec_not base64!", "must be a Standard Webhooks secret"),
        ("whsec_AA==", "must be at least 32 bytes"),
    ],
)
def test_weak_notify_secret_is_refused(secret: str, rule: str) -> None:
    [problem] = problems(**LIVE | {"notify_secret": secret})
    assert problem.startswith("NOTIFY_SECRET: ")
    assert rule in problem


@pytest.mark.parametrize(
    ("api_keys", "rule"),
    [
        ("orders:b:write", "the secret of client 'orders' must be at least 32 characters"),
        (f"{WRITER},orders:{'x' * 32}:read", "client 'orders' appears more than once"),
        (f"{WRITER},other:{'w' * 32}:read", "client 'other' shares its secret"),
        ("orders:abc", "entry 1 must look like client:secret:role"),
        ("orders:abc:admin", "entry 1 must look like client:secret:role"),
        (":abc:read", "entry 1 must look like client:secret:role"),
    ],
)
def test_bad_api_keys_are_refused(api_keys: str, rule: str) -> None:
    found = problems(**LIVE | {"api_keys": api_keys})
    assert any(problem.startswith(f"API_KEYS: {rule}") for problem in found), found


@pytest.mark.parametrize(
    "url", ["not a url", "ftp://callbridge.example.com", "https://", "https://h/?token=1"]
)
def test_live_public_base_url_must_be_an_http_url(url: str) -> None:
    assert problems(**LIVE | {"public_base_url": url}) == [
        "PUBLIC_BASE_URL: must be an http(s) URL (scheme and host, no query)"
    ]


def test_an_explicit_plain_http_or_loopback_public_base_url_is_accepted() -> None:
    assert settings(**LIVE | {"public_base_url": "http://127.0.0.1:8000/"}).public_base_url == (
        "http://127.0.0.1:8000"
    )


def test_problems_never_show_values() -> None:
    secret_values = {
        "callback_secret": "short-secret-value",
        "api_keys": "orders:leaky-key-value:write,orders:leaky-key-value:read",
        "notify_secret": "whsec_AA==",
        "public_base_url": "leaky url value",
    }
    found = problems(**LIVE | secret_values)
    assert len(found) >= 5
    text = "\n".join(found)
    for value in ("short-secret-value", "leaky-key-value", "AA==", "leaky url value"):
        assert value not in text


def test_every_problem_is_reported_at_once() -> None:
    found = problems(exotel_account_sid="acme", exotel_api_key="key", exotel_api_token="token")
    assert [problem.split(":")[0] for problem in found] == [
        "DATABASE_URL",
        "EXOTEL_CALLER_ID",
        "CALLBACK_SECRET",
        "NOTIFY_SECRET",
        "API_KEYS",
        "PUBLIC_BASE_URL",
    ]


def test_field_errors_name_the_variable() -> None:
    assert problems(**LIVE | {"exotel_requests_per_minute": 0}) == [
        "EXOTEL_REQUESTS_PER_MINUTE: Input should be greater than or equal to 1"
    ]


def test_exotel_budget_defaults_to_the_account_limit() -> None:
    assert settings(**LIVE).exotel_requests_per_minute == 200


def test_notify_allowed_hosts_parse_to_lowercase_names(monkeypatch: pytest.MonkeyPatch) -> None:
    assert settings(**SIMULATOR).notify_allowed_hosts == frozenset()
    monkeypatch.setenv("NOTIFY_ALLOWED_HOSTS", " Hooks.Internal ,receiver.local,, ")
    assert settings(**SIMULATOR).notify_allowed_hosts == {"hooks.internal", "receiver.local"}


@pytest.mark.parametrize("scheme", ["postgres://", "postgresql://"])
def test_database_url_is_normalised_to_psycopg(scheme: str) -> None:
    configured = settings(**SIMULATOR, database_url=f"{scheme}u:p@db:5432/callbridge")
    assert configured.database_url == "postgresql+psycopg://u:p@db:5432/callbridge"


def test_exotel_host_by_region_and_override() -> None:
    assert settings(**LIVE).exotel_host == "https://api.exotel.com"
    assert settings(**LIVE, exotel_region="mumbai").exotel_host == "https://api.in.exotel.com"
    override = settings(**LIVE, exotel_region="mumbai", exotel_base_url="http://127.0.0.1:9911/")
    assert override.exotel_host == "http://127.0.0.1:9911"


def test_api_keys_parse_with_roles() -> None:
    reader = "dashboard:" + "r" * 32 + ":read"
    configured = settings(**SIMULATOR, api_keys=f"{WRITER}, {reader}")
    assert {name: client.role for name, (client, _) in configured.api_clients.items()} == {
        "orders": "write",
        "dashboard": "read",
    }


def test_settings_errors_are_validation_errors_for_pydantic_callers() -> None:
    with pytest.raises(ValidationError):
        settings()


def test_logs_are_json_when_live_and_readable_in_simulator_mode() -> None:
    assert settings(**LIVE).json_logs
    assert not settings(**SIMULATOR).json_logs
    assert settings(**SIMULATOR, log_format="json").json_logs
    assert not settings(**LIVE, log_format="console").json_logs
