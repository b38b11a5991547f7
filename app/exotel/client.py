"""How Callbridge speaks to Exotel: one small class around one httpx.AsyncClient.

It knows nothing about the database. Every failure becomes one of the ExotelError
types below, chosen by what matters to the caller: did the request surely not reach
Exotel (safe to say "not placed"), did Exotel refuse it, or is the outcome unknown.

Numbers: From and To go out in E.164 as Exotel recommends; the CallerId (ExoPhone) in
the national form every Exotel sample shows (`08047112233`). Answers echo numbers in
national form; callers compare them after parsing (app.calls.service.to_e164).
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import AsyncIterator, Awaitable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import httpx
import phonenumbers
import structlog
from prometheus_client import Counter, Histogram
from pydantic import ValidationError

from app.exotel.schemas import (
    EXOTEL_TIMEZONE,
    ExotelCall,
    ExotelCallEnvelope,
    ExotelCallList,
    ExotelErrorEnvelope,
    ExotelRestException,
)
from app.exotel.transport import AiohttpTransport
from app.limits.budget import LimitReached, RequestLimiter
from app.metrics import EXOTEL_REQUEST_DURATION, EXOTEL_REQUESTS

log = structlog.get_logger(__name__)
ExotelModel = TypeVar("ExotelModel", ExotelCallEnvelope, ExotelCallList)

DEFAULT_RETRY_AFTER_S = 30
PAGE_SIZE = 100
# Bulk call details take at most 100 Sids a request.
MAX_SIDS_PER_REQUEST = 100
# A listing longer than this many pages is cut short (and logged): a bound on the
# requests one search may spend, whatever Exotel's next links say.
MAX_PAGES = 50
# Where Exotel keeps recordings: only there (https) and at the configured Exotel base
# URL are Callbridge's credentials ever sent for one.
EXOTEL_RECORDING_DOMAINS = ("exotel.com", "exotel.in")
RECORDING_ANSWERS = frozenset({200, 206, 416})


class ExotelError(Exception):
    """Exotel did not place (or did not confirm) what was asked."""

    def __init__(self, message: str, *, status: int | None = None, code: int | str | None = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code


class ExotelRefused(ExotelError):
    """Exotel answered 4xx: the request was understood and refused (bad number, DND, KYC...)."""


class ExotelAuthFailed(ExotelError):
    """Exotel rejected our credentials: an operator must fix the configuration."""


class ExotelRateLimited(ExotelError):
    def __init__(self, message: str, *, retry_after_s: int, code: int | str | None = None):
        super().__init__(message, status=429, code=code)
        self.retry_after_s = retry_after_s


class ExotelUnavailable(ExotelError):
    """Exotel answered 5xx, or could not be reached at all: nothing was placed."""


class ExotelOutcomeUnknown(ExotelError):
    """The request left but no usable answer came back: a call may or may not exist."""


@dataclass(frozen=True)
class ConnectRequest:
    """One connect request, already validated; values are Exotel's (E.164, `Both`, ...)."""

    from_number: str
    to_number: str
    caller_id: str
    status_callback: str
    call_type: str | None = None
    time_limit: int | None = None
    time_out: int | None = None
    wait_url: str | None = None
    record: bool | None = None
    recording_channels: str | None = None
    recording_format: str | None = None
    custom_field: str | None = None
    start_playback_to: str | None = None
    start_playback_value: str | None = None
    stream_url: str | None = None
    stream_begin: str | None = None

    def form(self) -> dict[str, str]:
        """The connect form. Exotel's `answered` event is asked for too, so that a live
        call shows `in-progress` with its legs while people talk."""
        optional: dict[str, Any] = {
            "CallType": self.call_type,
            "TimeLimit": self.time_limit,
            "TimeOut": self.time_out,
            "WaitUrl": self.wait_url,
            "Record": None if self.record is None else str(self.record).lower(),
            "RecordingChannels": self.recording_channels,
            "RecordingFormat": self.recording_format,
            "CustomField": self.custom_field,
            "StartPlaybackTo": self.start_playback_to,
            "StartPlaybackValue": self.start_playback_value,
            "StreamUrl": self.stream_url,
            "StreamBegin": self.stream_begin,
        }
        return {
            "From": self.from_number,
            "To": self.to_number,
            "CallerId": national_form(self.caller_id),
            **{name: str(value) for name, value in optional.items() if value is not None},
            "StatusCallback": self.status_callback,
            "StatusCallbackEvents[0]": "terminal",
            "StatusCallbackEvents[1]": "answered",
            "StatusCallbackContentType": "application/json",
        }


# Called for every call placed, with the few caller ids a deployment has.
@functools.lru_cache(maxsize=256)
def national_form(number: str) -> str:
    """An E.164 number in national form with its trunk prefix (`+918047112233` ->
    `08047112233`); anything else as given."""
    if not number.startswith("+"):
        return number
    try:
        parsed = phonenumbers.parse(number, None)
    except phonenumbers.NumberParseException:
        return number
    formatted = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.NATIONAL)
    return "".join(character for character in formatted if character.isdigit())


# Requests to Exotel in flight at once, at most. Every connection is kept alive: one
# closed after its request would be opened again for the next, a TCP and TLS handshake
# with Exotel on the path of a call being placed.
EXOTEL_CONNECTIONS = 50


def build_http_client(
    base_url: str, *, api_key: str, api_token: str, timeout_s: float
) -> httpx.AsyncClient:
    """The one AsyncClient for Exotel: Basic auth in the header, bounded everything.

    Its transport (app/exotel/transport.py) retries only failed connection attempts,
    i.e. requests that surely never reached Exotel, which is exactly the retry that is
    safe here.
    """
    return httpx.AsyncClient(
        base_url=base_url,
        auth=httpx.BasicAuth(api_key, api_token),
        timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 3.0), pool=5.0),
        transport=AiohttpTransport(max_connections=EXOTEL_CONNECTIONS),
        headers={"Accept": "application/json", "User-Agent": "callbridge"},
    )


def exotel_time(value: datetime) -> str:
    return value.astimezone(EXOTEL_TIMEZONE).strftime("%Y-%m-%d %H:%M:%S")


@dataclass(frozen=True)
class CallDetails:
    """A call-details answer: the call, and Exotel's bytes as received for the event log."""

    call: ExotelCall
    raw: bytes


@functools.cache
def _metrics(operation: str, outcome: str) -> tuple[Counter, Histogram]:
    """The metrics of one kind of request to Exotel, looked up once per kind."""
    return (
        EXOTEL_REQUESTS.labels(operation, outcome),
        EXOTEL_REQUEST_DURATION.labels(operation, outcome),
    )


class ExotelClient:
    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        account_sid: str,
        limiter: RequestLimiter,
    ):
        self._http = http
        self._calls_path = f"/v1/Accounts/{account_sid}/Calls"
        self._limiter = limiter

    async def connect(self, request: ConnectRequest, place: Awaitable[None]) -> ExotelCall:
        """Ask Exotel to ring From, then To. Never retried once the request has left.

        `place`: the request's place under EXOTEL_REQUESTS_PER_MINUTE, reserved by the
        statement that stored the call (`FleetLimiter.placing`): it waits until the place
        is ours, or raises LimitReached."""
        response = await self._send(
            "connect", "POST", "/connect.json", data=request.form(), place=place
        )
        try:
            return ExotelCallEnvelope.model_validate_json(response.content).call
        except ValidationError as exc:
            # Exotel said 2xx, so a call probably exists, but we cannot tell its Sid.
            raise ExotelOutcomeUnknown("Exotel's answer could not be read") from exc

    async def call_details(self, sid: str) -> CallDetails | None:
        """The call as Exotel knows it now, with leg details; None if Exotel has no such call."""
        try:
            response = await self._send(
                "call_details", "GET", f"/{sid}.json", params={"details": "true"}
            )
        except ExotelRefused as exc:
            if exc.status == 404:
                return None
            raise
        return CallDetails(self._parse(ExotelCallEnvelope, response).call, response.content)

    async def find_calls(
        self, *, to_number: str, created_after: datetime, created_before: datetime
    ) -> list[ExotelCall]:
        """Calls to `to_number` created in the window, across all pages. Exotel lists
        only calls that have ended."""
        listed = await self._listing(
            {
                "To": to_number,
                "DateCreated": (
                    f"gte:{exotel_time(created_after)};lte:{exotel_time(created_before)}"
                ),
                "PageSize": str(PAGE_SIZE),
            }
        )
        return [found.call for found in listed]

    async def bulk_details_by_sids(self, sids: Sequence[str]) -> list[CallDetails]:
        """The calls of `sids` with their details, 100 Sids a request, each with its own
        JSON from the page. Exotel lists only ended calls created in the last 31 days:
        others are simply not in the answer."""
        unique = list(dict.fromkeys(sids))
        found: list[CallDetails] = []
        for start in range(0, len(unique), MAX_SIDS_PER_REQUEST):
            batch = unique[start : start + MAX_SIDS_PER_REQUEST]
            found.extend(
                await self._listing(
                    {"Sid": ",".join(batch), "details": "true", "PageSize": str(PAGE_SIZE)}
                )
            )
        return found

    async def _listing(self, params: dict[str, str]) -> list[CallDetails]:
        """Every page of a bulk listing, in whichever of Exotel's three paging shapes it
        comes; an empty page that still links to a next one is not the end."""
        path: str = ".json"
        query: dict[str, str] | None = params
        followed: set[str] = set()
        found: list[CallDetails] = []
        for _ in range(MAX_PAGES):
            response = await self._send("bulk_details", "GET", path, params=query)
            page = self._parse(ExotelCallList, response)
            if page.calls:
                # Each call's own JSON, for the event log (the page parsed: `Calls` is a list).
                raws = json.loads(response.content)["Calls"]
                found.extend(
                    CallDetails(call, json.dumps(raw).encode())
                    for call, raw in zip(page.calls, raws, strict=True)
                )
            next_page = self._own_path(page.next_page_uri)
            if next_page is None or next_page in followed:
                return found
            followed.add(next_page)
            # A next link carries its own query.
            path, query = next_page, None
        log.warning("exotel_listing_cut_short", pages=MAX_PAGES, calls=len(found))
        return found

    def _own_path(self, uri: str | None) -> str | None:
        """A next-page link as a path on our Exotel host; None for none, or for a link to
        another host, which is never sent our credentials."""
        if not uri:
            return None
        if uri.startswith("/"):
            return uri
        link = httpx.URL(uri)
        base = self._http.base_url
        if (link.scheme, link.host, link.port) != (base.scheme, base.host, base.port):
            log.warning("exotel_next_page_elsewhere", host=link.host)
            return None
        return link.raw_path.decode("ascii")

    def may_fetch_recording(self, url: str) -> bool:
        """Whether `url` is one of Exotel's recording locations (https on Exotel's own
        domains) or on the configured Exotel base URL: the only places that are ever
        sent Callbridge's credentials."""
        try:
            target = httpx.URL(url)
        except httpx.InvalidURL:
            return False
        if target.userinfo or not target.host:
            return False
        base = self._http.base_url
        if (target.scheme, target.host, target.port) == (base.scheme, base.host, base.port):
            return True
        host = target.host.lower()
        return (
            target.scheme == "https"
            and target.port in (None, 443)
            and any(
                host == domain or host.endswith("." + domain) for domain in EXOTEL_RECORDING_DOMAINS
            )
        )

    @asynccontextmanager
    async def stream_recording(
        self, url: str, range_header: str | None = None
    ) -> AsyncIterator[httpx.Response]:
        """Exotel's answer for a recording, open for streaming (`aiter_raw`), never read
        whole: 200, 206 (the range asked for) or 416. Only from `may_fetch_recording`
        locations. Recordings are not voice API requests: no slot of the rate limit."""
        if not self.may_fetch_recording(url):
            raise ExotelRefused("The recording is not at one of Exotel's recording locations")
        headers = {"Accept": "*/*", "Accept-Encoding": "identity"}
        if range_header:
            headers["Range"] = range_header
        started = time.perf_counter()
        try:
            async with self._http.stream(
                "GET", url, headers=headers, follow_redirects=True
            ) as response:
                known = response.status_code in RECORDING_ANSWERS
                self._record("recording", "ok" if known else "error", started, response.status_code)
                if not known:
                    raise self._recording_error(response.status_code)
                yield response
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            self._record("recording", "unreachable", started)
            raise ExotelUnavailable(f"Exotel could not be reached: {type(exc).__name__}") from exc
        except httpx.TransportError as exc:
            self._record("recording", "no_answer", started)
            raise ExotelUnavailable(f"The recording download failed: {type(exc).__name__}") from exc

    @staticmethod
    def _recording_error(status: int) -> ExotelError:
        message = f"Exotel answered HTTP {status} for the recording"
        if status == 401:
            return ExotelAuthFailed(message, status=status)
        if status >= 500:
            return ExotelUnavailable(message, status=status)
        return ExotelRefused(message, status=status)

    @staticmethod
    def _parse(model: type[ExotelModel], response: httpx.Response) -> ExotelModel:
        try:
            return model.model_validate_json(response.content)
        except ValidationError as exc:
            raise ExotelUnavailable("Exotel's answer could not be read") from exc

    async def _send(
        self,
        operation: str,
        method: str,
        path: str,
        *,
        data: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
        place: Awaitable[None] | None = None,
    ) -> httpx.Response:
        url = path if path.startswith("/v1/") else self._calls_path + path
        await self._wait_for_rate_limit(operation, place or self._limiter.acquire())
        started = time.perf_counter()
        try:
            response = await self._http.request(method, url, data=data, params=params)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            self._record(operation, "unreachable", started)
            raise ExotelUnavailable(f"Exotel could not be reached: {type(exc).__name__}") from exc
        except httpx.TransportError as exc:
            self._record(operation, "no_answer", started)
            raise ExotelOutcomeUnknown(
                f"No answer from Exotel after sending: {type(exc).__name__}"
            ) from exc
        self._record(
            operation, "ok" if response.is_success else "error", started, response.status_code
        )
        if not response.is_success:
            raise self._error(response)
        return response

    async def _wait_for_rate_limit(self, operation: str, place: Awaitable[None]) -> None:
        """Wait for a place under EXOTEL_REQUESTS_PER_MINUTE, shared by the whole fleet.

        Placing a call goes first: its place comes reserved (`connect`); lookups take
        only places that placing leaves spare. The limiter waits only a few seconds: a
        burst larger than the budget would otherwise queue for minutes while its
        callers wait.
        """
        try:
            await place
        except LimitReached as refused:
            self._record(operation, "throttled", time.perf_counter())
            raise ExotelRateLimited(
                "Callbridge's own limit of requests to Exotel is reached",
                retry_after_s=refused.retry_after_s,
            ) from None

    @staticmethod
    def _record(operation: str, outcome: str, started: float, status: int | None = None) -> None:
        """Count one request, and log it; never its URL, whose query may hold a phone number.

        A request answered `ok` is logged at debug: the metrics count and time every one,
        and a line each would cost placing a call more CPU than its own statements.
        """
        latency_s = time.perf_counter() - started
        requests, durations = _metrics(operation, outcome)
        requests.inc()
        durations.observe(latency_s)
        (log.debug if outcome == "ok" else log.info)(
            "exotel_request",
            operation=operation,
            outcome=outcome,
            status=status,
            latency_ms=round(latency_s * 1000, 1),
        )

    @staticmethod
    def _error(response: httpx.Response) -> ExotelError:
        try:
            rest = ExotelErrorEnvelope.model_validate_json(response.content).rest_exception
        except ValidationError:
            rest = ExotelRestException()
        status = response.status_code
        message = rest.message or f"Exotel answered HTTP {status}"
        if status == 429:
            retry_after = response.headers.get("retry-after", "")
            seconds = int(retry_after) if retry_after.isdigit() else DEFAULT_RETRY_AFTER_S
            return ExotelRateLimited(message, retry_after_s=seconds, code=rest.code)
        kind: type[ExotelError]
        if status == 401:
            kind = ExotelAuthFailed
        elif status >= 500:
            kind = ExotelUnavailable
        else:
            kind = ExotelRefused
        return kind(message, status=status, code=rest.code)
