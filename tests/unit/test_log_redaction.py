"""The log redactor: the safety net under code that should never log a secret or a number."""

from __future__ import annotations

from typing import Any

import pytest

from app.logs import Redactor

TOKEN = "0f" * 16 + "." + "ab" * 32


def redact(event: dict[str, Any], secrets: tuple[str, ...] = ()) -> dict[str, Any]:
    return dict(Redactor(secrets)(None, "info", event))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("dialling +919876543210 now", "dialling +91******3210 now"),
        ("local 09876543210", "local 098****3210"),
        ("Authorization: Bearer abc.def-123", "Authorization: Bearer [redacted]"),
        ("auth=Basic ZXhvdGVsOnRva2Vu", "auth=Basic [redacted]"),
        (
            "POST http://cb.test/callbacks/exotel?token=abc&x=1",
            "POST http://cb.test/callbacks/exotel?token=[redacted]&x=1",
        ),
        (
            "postgresql+psycopg://callbridge:s3cret@db:5432/cb",
            "postgresql+psycopg://[redacted]@db:5432/cb",
        ),
        (f"bad token {TOKEN}", "bad token [redacted]"),
        ("secret whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "secret whsec_[redacted]"),
    ],
)
def test_masks_what_looks_like_a_number_or_a_secret(text: str, expected: str) -> None:
    assert redact({"event": "x", "detail": text})["detail"] == expected


@pytest.mark.parametrize(
    "kept",
    [
        "4f0c1d1e-9a4b-4c55-8f0e-123456789012",
        "c5797dcbaaeed7678c4062a4a3ed2f8a",
        "2026-11-26T10:00:00.123456Z",
        "+91******3210",
        "order-1234",
    ],
)
def test_leaves_ids_times_and_masked_numbers_alone(kept: str) -> None:
    assert redact({"event": "x", "value": kept})["value"] == kept


def test_known_secrets_are_replaced_wherever_they_appear() -> None:
    event = {"event": "boom", "exception": "ValueError: bad key writer-secret-1234 in header"}

    redacted = redact(event, secrets=("writer-secret-1234", "short"))

    assert redacted["exception"] == "ValueError: bad key [redacted] in header"


def test_values_under_secret_names_are_replaced_at_any_depth() -> None:
    event = {
        "event": "configured",
        "api_key": "k",
        "settings": {"callback_secret": "s", "exotel": {"Authorization": "x"}, "region": "mumbai"},
        "numbers": ["+919876543210"],
        "attempts": 3,
    }

    assert redact(event) == {
        "event": "configured",
        "api_key": "[redacted]",
        "settings": {
            "callback_secret": "[redacted]",
            "exotel": {"Authorization": "[redacted]"},
            "region": "mumbai",
        },
        "numbers": ["+91******3210"],
        "attempts": 3,
    }
