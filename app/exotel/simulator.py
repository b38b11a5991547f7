"""An Exotel stand-in: the v1 "connect two numbers" API as Callbridge uses it.

Exotel has no sandbox, so this ASGI app plays that part in development and tests. It
answers the connect, call-details and bulk call-details APIs in Exotel's shapes, plays
every call forward in compressed simulated time (`SimulatorConfig.speed` simulated
seconds per real second) and posts status callbacks the way Exotel does: multipart by
default, JSON on request, retried twice on failure.

Run it standalone with `python -m app.exotel.simulator --host 127.0.0.1 --port 9911`
(`serve_simulator` does the same from code), or mount `Simulator(...).app` under a
prefix (then call `aclose()` on shutdown: a mounted app gets no lifespan events).
URIs in its answers (`Uri`, `NextPageUri`) start at `/v1/...`, relative to wherever
the app is mounted, as Exotel's are relative to its API host.

Test numbers: the last four digits of `To` choose what happens, like test card numbers.

| To ends in | What happens |
|---|---|
| 9901 | busy: To leg busy; From leg completed with its on-call time; ConversationDuration 0 |
| 9902 | no-answer: To rings out (TimeOut) unanswered |
| 9903 | failed: To leg fails |
| 9904 | From never answers: no-answer; Legs[0] no-answer; Legs[1] never attempted (empty) |
| 9905 | DND: 403 "Call to <To> cannot be made because of TRAI NDNC regulations"; no call |
| 9906 | rate limited: 429, `Retry-After: 30`, Code "RATE_LIMIT_EXCEEDED"; no call |
| 9907 | Exotel down: 500 "Service Unavailable; ", Code 35008; no call |
| 9908 | slow answer: the connect answer comes after `slow_answer_s` real seconds |
| 9909 | lost answer: call placed, but the answer hangs `lost_answer_hang_s`, then drops |
| 9910 | duplicated callback: the terminal callback is delivered 3 times |
| 9911 | callback first: the call ends at once; its callback is delivered before the answer |
| 9912 | stale answered: an `answered` callback (in-progress) follows the terminal one |
| 9913 | no callback: the call completes, but no callback is ever sent |
| 9914 | KYC: 403 "Account is not KYC compliant"; no call |
| 9915 | auth failure: 401 as if the credentials were wrong; no call |
| other | completes normally: From rings 3-6 s, To rings 3-8 s, talk 20-60 s |

Details of the simulation:
- A call is `in-progress` from its creation until its terminal status. Leg statuses
  read null until the leg is attempted and answered, then `in-progress`, then final.
- Timestamps run on the simulated clock: `DateCreated` is the real time of the
  connect request (naive IST), later times advance `speed` times faster than real
  time, so `Duration` always equals `EndTime - StartTime`.
- `TimeOut` (default 30 s, capped at Exotel's 60 s) bounds every ring.
- `Record=true` records answered calls (an absent `Record` means no recording).
- `Price` is 0.750 per started minute of each leg's on-call time, as a string.
- Every connect request, refused ones included, is kept for tests: see
  `Simulator.connect_requests` and `GET`/`DELETE /_sim/requests` (no auth).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import enum
import json
import logging
import math
import random
import secrets
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Final
from urllib.parse import urlencode

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.datastructures import FormData, QueryParams
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from app.exotel.schemas import EXOTEL_TIMEZONE

logger = logging.getLogger(__name__)

EXOTEL_TIME_FORMAT: Final = "%Y-%m-%d %H:%M:%S"
DEFAULT_RING_TIMEOUT_S: Final = 30
MAX_RING_TIMEOUT_S: Final = 60
DEFAULT_PAGE_SIZE: Final = 50
MAX_PAGE_SIZE: Final = 100
MAX_SIDS_PER_QUERY: Final = 100
PRICE_PER_STARTED_MINUTE: Final = Decimal("0.750")
CALLBACK_ATTEMPTS: Final = 3  # Exotel tries once and retries up to twice
CALLBACK_RETRY_PAUSE_S: Final = 1.0  # simulated seconds
CALLBACK_TIMEOUT_S: Final = 15.0  # Exotel's limit for a 2xx, in real seconds
DUPLICATED_CALLBACK_COPIES: Final = 3
RATE_LIMIT_RETRY_AFTER_S: Final = 30
RECORDINGS_BASE_URL: Final = "https://recordings.exotel.sim"

PageUri = Callable[[str | None], str]  # the URI of the page after a call Sid, or the first page

# Durations only need to look plausible; nothing here is security-sensitive.
_durations = random.Random()  # noqa: S311


class Scenario(enum.Enum):
    NORMAL = "normal"
    BUSY = "busy"
    NO_ANSWER = "no-answer"
    FAILED = "failed"
    CALLER_NO_ANSWER = "caller-no-answer"
    DND_BLOCKED = "dnd-blocked"
    RATE_LIMITED = "rate-limited"
    EXOTEL_DOWN = "exotel-down"
    SLOW_ANSWER = "slow-answer"
    LOST_ANSWER = "lost-answer"
    DUPLICATED_CALLBACK = "duplicated-callback"
    CALLBACK_BEFORE_ANSWER = "callback-before-answer"
    STALE_ANSWERED = "stale-answered"
    NO_CALLBACK = "no-callback"
    KYC_BLOCKED = "kyc-blocked"
    AUTH_FAILURE = "auth-failure"


SCENARIO_BY_LAST_DIGITS: Final[Mapping[str, Scenario]] = {
    "9901": Scenario.BUSY,
    "9902": Scenario.NO_ANSWER,
    "9903": Scenario.FAILED,
    "9904": Scenario.CALLER_NO_ANSWER,
    "9905": Scenario.DND_BLOCKED,
    "9906": Scenario.RATE_LIMITED,
    "9907": Scenario.EXOTEL_DOWN,
    "9908": Scenario.SLOW_ANSWER,
    "9909": Scenario.LOST_ANSWER,
    "9910": Scenario.DUPLICATED_CALLBACK,
    "9911": Scenario.CALLBACK_BEFORE_ANSWER,
    "9912": Scenario.STALE_ANSWERED,
    "9913": Scenario.NO_CALLBACK,
    "9914": Scenario.KYC_BLOCKED,
    "9915": Scenario.AUTH_FAILURE,
}


def scenario_for(to_number: str) -> Scenario:
    digits = "".join(character for character in to_number if character.isdigit())
    return SCENARIO_BY_LAST_DIGITS.get(digits[-4:], Scenario.NORMAL)


@dataclass(frozen=True)
class SimulatorConfig:
    account_sid: str = "callbridge-sim"
    api_key: str = "sim-key"
    api_token: str = "sim-token"  # noqa: S105 - the simulator's well-known dev credential
    speed: float = 10.0  # simulated seconds per real second: a 30 s call takes 3 s
    lost_answer_hang_s: float = 30.0  # how long a "lost answer" request hangs before dropping
    slow_answer_s: float = 2.0  # real seconds the "slow answer" scenario waits before answering

    def __post_init__(self) -> None:
        if self.speed <= 0:
            raise ValueError("speed must be positive")


@dataclass(frozen=True)
class _Plan:
    """How a call will play out, in whole simulated seconds (Exotel reports whole seconds)."""

    from_ring_s: int
    from_answers: bool
    to_ring_s: int = 0
    to_outcome: str = "completed"  # the To leg's final status; "completed" means it answered
    talk_s: int = 0


def _plan_for(scenario: Scenario, ring_timeout_s: int) -> _Plan:
    def ring(low: int, high: int) -> int:
        return min(_durations.randint(low, high), ring_timeout_s)

    if scenario is Scenario.CALLER_NO_ANSWER:
        return _Plan(from_ring_s=ring_timeout_s, from_answers=False)
    from_ring_s = ring(3, 6)
    match scenario:
        case Scenario.BUSY:
            return _Plan(from_ring_s, from_answers=True, to_ring_s=ring(2, 4), to_outcome="busy")
        case Scenario.NO_ANSWER:
            return _Plan(
                from_ring_s, from_answers=True, to_ring_s=ring_timeout_s, to_outcome="no-answer"
            )
        case Scenario.FAILED:
            return _Plan(from_ring_s, from_answers=True, to_ring_s=ring(1, 2), to_outcome="failed")
        case _:
            return _Plan(
                from_ring_s,
                from_answers=True,
                to_ring_s=ring(3, 8),
                talk_s=_durations.randint(20, 60),
            )


@dataclass
class _Leg:
    status: str | None = None  # None: not attempted or not answered yet
    on_call_s: int = 0
    answered: bool = False

    def callback_json(self) -> dict[str, Any]:
        leg: dict[str, Any] = {"OnCallDuration": self.on_call_s, "Status": self.status}
        if self.answered:
            leg["AnsweredBy"] = "human"
        return leg

    def price(self) -> Decimal:
        return PRICE_PER_STARTED_MINUTE * math.ceil(self.on_call_s / 60)


@dataclass
class _SimulatedCall:
    sid: str
    account_sid: str
    from_number: str
    to_number: str
    caller_id: str
    custom_field: str | None
    record: bool
    status_callback: str | None
    callback_events: frozenset[str]
    callback_as_json: bool
    scenario: Scenario
    plan: _Plan
    created_at: datetime
    status: str = "in-progress"
    updated_s: int = 0  # simulated seconds after creation of the last change
    end_s: int | None = None
    conversation_s: int = 0
    caller: _Leg = field(default_factory=_Leg)  # leg 0, From
    callee: _Leg = field(default_factory=_Leg)  # leg 1, To
    held_answered_callback: dict[str, Any] | None = None  # the stale-answered scenario's

    @property
    def answered(self) -> bool:
        return self.callee.answered

    @property
    def recording_url(self) -> str | None:
        if not (self.record and self.answered and self.end_s is not None):
            return None
        return f"{RECORDINGS_BASE_URL}/{self.account_sid}/{self.sid}.mp3"

    def time_at(self, offset_s: int | None) -> str | None:
        if offset_s is None:
            return None
        return (self.created_at + timedelta(seconds=offset_s)).strftime(EXOTEL_TIME_FORMAT)

    # Transitions, in the order a call can go through them.

    def caller_not_answered(self, at_s: int) -> None:
        self.caller.status = "no-answer"
        self._finish("no-answer", at_s)

    def caller_answered(self, at_s: int) -> None:
        self.caller.status, self.caller.answered = "in-progress", True
        self.updated_s = at_s

    def callee_not_connected(self, status: str, at_s: int) -> None:
        self.callee.status = status
        self.caller.status = "completed"
        self.caller.on_call_s = self.plan.to_ring_s
        self._finish(status, at_s)

    def callee_answered(self, at_s: int) -> None:
        self.callee.status, self.callee.answered = "in-progress", True
        self.caller.on_call_s = self.plan.to_ring_s
        self.updated_s = at_s

    def hung_up(self, at_s: int) -> None:
        self.caller.status = self.callee.status = "completed"
        self.caller.on_call_s = self.plan.to_ring_s + self.plan.talk_s
        self.callee.on_call_s = self.conversation_s = self.plan.talk_s
        self._finish("completed", at_s)

    def _finish(self, status: str, at_s: int) -> None:
        self.status, self.updated_s, self.end_s = status, at_s, at_s

    # Exotel's representations.

    def exotel_json(self, *, with_details: bool) -> dict[str, Any]:
        finished = self.end_s is not None
        price = self.caller.price() + self.callee.price()
        call: dict[str, Any] = {
            "Sid": self.sid,
            "ParentCallSid": None,
            "DateCreated": self.time_at(0),
            "DateUpdated": self.time_at(self.updated_s),
            "AccountSid": self.account_sid,
            "To": self.to_number,
            "From": self.from_number,
            "PhoneNumberSid": self.caller_id,
            "Status": self.status,
            "StartTime": self.time_at(0),
            "EndTime": self.time_at(self.end_s),
            "Duration": str(self.end_s) if finished else None,
            "Price": f"{price:.3f}" if finished else None,
            "Direction": "outbound-api",
            "AnsweredBy": "human" if self.answered else None,
            "ForwardedFrom": None,
            "CallerName": None,
            # Exotel's own sample answer spells the Uri this way.
            "Uri": f"/v1/Accounts/{self.account_sid}/Calls.json/{self.sid}",
            "RecordingUrl": self.recording_url,
        }
        if with_details:
            call["Details"] = {
                "ConversationDuration": self.conversation_s,
                "Leg1Status": self.caller.status,
                "Leg2Status": self.callee.status,
                "Legs": [
                    {"Leg": {"Id": 1, "OnCallDuration": self.caller.on_call_s}},
                    {"Leg": {"Id": 2, "OnCallDuration": self.callee.on_call_s}},
                ],
            }
        return call

    def callback_payload(self, event_type: str | None) -> dict[str, Any]:
        """A status callback, JSON-shaped, with None for absent values.

        Without a subscribed event Exotel sends only the four basic fields.
        """
        if event_type is None:
            return {
                "CallSid": self.sid,
                "DateUpdated": self.time_at(self.updated_s),
                "Status": self.status,
                "RecordingUrl": self.recording_url,
            }
        payload: dict[str, Any] = {
            "CallSid": self.sid,
            "EventType": event_type,
            "DateCreated": self.time_at(0),
            "DateUpdated": self.time_at(self.updated_s),
            "Status": self.status,
            "To": self.to_number,
            "From": self.from_number,
            "PhoneNumberSid": self.caller_id,
            "StartTime": self.time_at(0),
            "EndTime": self.time_at(self.end_s),
            "Direction": "outbound-api",
            "RecordingUrl": self.recording_url,
            "ConversationDuration": self.conversation_s,
        }
        # Exotel passes CustomField back only with the terminal event.
        if event_type == "terminal" and self.custom_field is not None:
            payload["CustomField"] = self.custom_field
        payload["Legs"] = [self.caller.callback_json(), self.callee.callback_json()]
        return payload


def _masked(number: str) -> str:
    return "*" * max(len(number) - 4, 0) + number[-4:]


def _exotel_json_body(payload: dict[str, Any]) -> tuple[bytes, str]:
    return json.dumps(payload).encode(), "application/json"


def _multipart_body(payload: dict[str, Any]) -> tuple[bytes, str]:
    """Exotel's default callback encoding: legs flattened as `Legs[0][Status]`, absent as ""."""
    fields: list[tuple[str, str]] = []
    for name, value in payload.items():
        if name == "Legs":
            for index, leg in enumerate(value):
                fields.extend(
                    (f"Legs[{index}][{key}]", _form_value(item)) for key, item in leg.items()
                )
        else:
            fields.append((name, _form_value(value)))
    boundary = secrets.token_hex(16)
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
        for name, value in fields
    ]
    body = "".join(parts) + f"--{boundary}--\r\n"
    return body.encode(), f"multipart/form-data; boundary={boundary}"


def _form_value(value: Any) -> str:
    return "" if value is None else str(value)


def _rest_exception(status: int, message: str, code: int | str | None = None) -> JSONResponse:
    body = {"RestException": {"Status": status, "Message": message, "Code": code}}
    return JSONResponse(body, status_code=status)


def _unauthorized() -> JSONResponse:
    return _rest_exception(401, "Authentication is required to view this page.")


def _refusal(scenario: Scenario, to_number: str) -> JSONResponse | None:
    """The error answer of the scenarios in which Exotel refuses to place the call."""
    match scenario:
        case Scenario.DND_BLOCKED:
            message = f"Call to {to_number} cannot be made because of TRAI NDNC regulations"
            return _rest_exception(403, message, 403)
        case Scenario.KYC_BLOCKED:
            return _rest_exception(403, "Account is not KYC compliant", 403)
        case Scenario.RATE_LIMITED:
            response = _rest_exception(429, "Too many requests", "RATE_LIMIT_EXCEEDED")
            response.headers["Retry-After"] = str(RATE_LIMIT_RETRY_AFTER_S)
            return response
        case Scenario.EXOTEL_DOWN:
            return _rest_exception(500, "Service Unavailable; ", 35008)
        case Scenario.AUTH_FAILURE:
            return _unauthorized()
        case _:
            return None


class _DroppedAnswer(Response):
    """Hangs, then drops the connection without a complete answer: a lost reply."""

    def __init__(self, hang_s: float) -> None:
        super().__init__()
        self.hang_s = hang_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await asyncio.wait_for(_client_disconnect(receive), timeout=self.hang_s)
        except TimeoutError:
            # Starting the answer first makes a server close the connection rather than
            # answer 500; in-process (httpx.ASGITransport) the client gets this error.
            await send({"type": "http.response.start", "status": 200, "headers": []})
            raise httpx.RemoteProtocolError("simulated lost answer: connection dropped") from None
        # Otherwise the client gave up first (its read timeout): there is nobody to answer.


async def _client_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def _form_fields(form: FormData) -> dict[str, str]:
    return {name: value for name, value in form.items() if isinstance(value, str)}


def _callback_events(form: FormData) -> frozenset[str]:
    """`StatusCallbackEvents[0]=terminal&...`, or the same name repeated without an index."""
    return frozenset(
        value.strip().lower()
        for name, value in form.multi_items()
        if isinstance(value, str)
        and (name == "StatusCallbackEvents" or name.startswith("StatusCallbackEvents["))
    )


def _ring_timeout(raw: str | None) -> int:
    try:
        requested = int(raw) if raw else DEFAULT_RING_TIMEOUT_S
    except ValueError:
        requested = DEFAULT_RING_TIMEOUT_S
    return min(max(requested, 1), MAX_RING_TIMEOUT_S)


def _page_size(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_PAGE_SIZE
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError("PageSize must be a positive integer")
    return min(int(raw), MAX_PAGE_SIZE)


def _date_window(raw: str | None) -> tuple[datetime | None, datetime | None]:
    """`gte:YYYY-MM-DD HH:mm:ss;lte:YYYY-MM-DD HH:mm:ss` (IST), either bound optional."""
    bounds: dict[str, datetime] = {}
    for condition in filter(None, (raw or "").split(";")):
        operator, _, moment = condition.partition(":")
        if operator not in {"gte", "lte"}:
            raise ValueError(f"DateCreated accepts gte and lte, not {operator!r}")
        try:
            parsed = datetime.strptime(moment.strip(), EXOTEL_TIME_FORMAT)
        except ValueError as exc:
            raise ValueError("DateCreated times must read YYYY-MM-DD HH:mm:ss") from exc
        bounds[operator] = parsed.replace(tzinfo=EXOTEL_TIMEZONE)
    return bounds.get("gte"), bounds.get("lte")


class Simulator:
    """Exotel's call APIs over an in-memory store of simulated calls."""

    def __init__(
        self,
        config: SimulatorConfig = SimulatorConfig(),
        *,
        callback_transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.config = config
        self.connect_requests: list[dict[str, str]] = []
        self._calls: dict[str, _SimulatedCall] = {}  # in creation order
        self._tasks: set[asyncio.Task[None]] = set()
        self._callback_client = httpx.AsyncClient(
            transport=callback_transport, timeout=CALLBACK_TIMEOUT_S
        )
        calls_path = "/v1/Accounts/{account_sid}/Calls"
        self.app = Starlette(
            routes=[
                Route(f"{calls_path}/connect.json", self._connect, methods=["POST"]),
                Route(f"{calls_path}/connect", self._connect, methods=["POST"]),
                Route(f"{calls_path}.json", self._list_calls, methods=["GET"]),
                Route(calls_path + "/{call_sid}.json", self._call_details, methods=["GET"]),
                Route("/_sim/requests", self._recorded_requests, methods=["GET"]),
                Route("/_sim/requests", self._forget_requests, methods=["DELETE"]),
            ],
            lifespan=self._lifespan,
        )

    async def aclose(self) -> None:
        """Stop every running call timeline and callback delivery."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._callback_client.aclose()

    @contextlib.asynccontextmanager
    async def _lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        yield
        await self.aclose()

    # Routes.

    async def _connect(self, request: Request) -> Response:
        form = await request.form()
        fields = _form_fields(form)
        self.connect_requests.append(fields)
        if not self._authorized(request):
            return _unauthorized()
        for mandatory in ("From", "To", "CallerId"):
            if not fields.get(mandatory, "").strip():
                return _rest_exception(400, f"{mandatory} is a mandatory parameter")
        scenario = scenario_for(fields["To"])
        logger.info("connect to %s: scenario %s", _masked(fields["To"]), scenario.value)
        refusal = _refusal(scenario, fields["To"])
        if refusal is not None:
            return refusal
        if scenario is Scenario.SLOW_ANSWER:
            await asyncio.sleep(self.config.slow_answer_s)
        call = self._create_call(fields, _callback_events(form), scenario)
        # Rendered now: when the callback comes first, the answer still says in-progress,
        # like a reply that lost the race against its own callback.
        answer = JSONResponse({"Call": call.exotel_json(with_details=False)})
        if scenario is Scenario.CALLBACK_BEFORE_ANSWER:
            await self._play(call, in_real_time=False)
        else:
            self._spawn(self._play(call, in_real_time=True))
        if scenario is Scenario.LOST_ANSWER:
            return _DroppedAnswer(self.config.lost_answer_hang_s)
        return answer

    async def _call_details(self, request: Request) -> Response:
        if not self._authorized(request):
            return _unauthorized()
        call = self._calls.get(request.path_params["call_sid"])
        if call is None:
            return _rest_exception(404, "Call not found")
        with_details = request.query_params.get("details", "").lower() == "true"
        return JSONResponse({"Call": call.exotel_json(with_details=with_details)})

    async def _list_calls(self, request: Request) -> Response:
        if not self._authorized(request):
            return _unauthorized()
        query = request.query_params
        sids = {sid.strip() for sid in query.get("Sid", "").split(",") if sid.strip()}
        try:
            page_size = _page_size(query.get("PageSize"))
            created_from, created_to = _date_window(query.get("DateCreated"))
        except ValueError as exc:
            return _rest_exception(400, str(exc))
        if len(sids) > MAX_SIDS_PER_QUERY:
            return _rest_exception(400, f"Sid accepts at most {MAX_SIDS_PER_QUERY} values")
        newest_first = [
            call
            for call in reversed(self._calls.values())
            if (not sids or call.sid in sids)
            and query.get("To", call.to_number) == call.to_number
            and query.get("From", call.from_number) == call.from_number
            and (created_from is None or call.created_at >= created_from)
            and (created_to is None or call.created_at <= created_to)
        ]
        # The cursor is the Sid of the previous page's last call: new calls land before
        # it in newest-first order, so pages never shift under a reader.
        start = 0
        if after := query.get("After"):
            positions = [index for index, call in enumerate(newest_first) if call.sid == after]
            if not positions:
                return _rest_exception(400, "After does not name a call of this listing")
            start = positions[0] + 1
        page = newest_first[start : start + page_size]
        with_details = query.get("details", "").lower() == "true"
        page_uri = self._page_uri_builder(request.path_params["account_sid"], query, page_size)
        previous_uri = None
        if start > 0:
            previous_start = max(start - page_size, 0)
            previous_uri = page_uri(
                newest_first[previous_start - 1].sid if previous_start else None
            )
        has_more = start + page_size < len(newest_first)
        metadata = {
            "Total": len(newest_first),
            "PageSize": page_size,
            "FirstPageUri": page_uri(None),
            "PrevPageUri": previous_uri,
            "NextPageUri": page_uri(page[-1].sid) if has_more else None,
        }
        calls = [call.exotel_json(with_details=with_details) for call in page]
        return JSONResponse({"Metadata": metadata, "Calls": calls})

    async def _recorded_requests(self, _request: Request) -> Response:
        return JSONResponse(self.connect_requests)

    async def _forget_requests(self, _request: Request) -> Response:
        self.connect_requests.clear()
        return Response(status_code=204)

    # Helpers of the routes.

    def _authorized(self, request: Request) -> bool:
        config = self.config
        if not secrets.compare_digest(
            request.path_params["account_sid"].encode(), config.account_sid.encode()
        ):
            return False
        scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            credentials = base64.b64decode(encoded, validate=True)
        except binascii.Error:
            return False
        expected = f"{config.api_key}:{config.api_token}".encode()
        return secrets.compare_digest(credentials, expected)

    @staticmethod
    def _page_uri_builder(account_sid: str, query: QueryParams, page_size: int) -> PageUri:
        filters = [
            (name, query[name])
            for name in ("Sid", "To", "From", "DateCreated", "details")
            if name in query
        ]
        filters.append(("PageSize", str(page_size)))
        path = f"/v1/Accounts/{account_sid}/Calls.json"

        def page_uri(after: str | None) -> str:
            params = filters if after is None else [*filters, ("After", after)]
            return f"{path}?{urlencode(params)}"

        return page_uri

    def _create_call(
        self, fields: dict[str, str], callback_events: frozenset[str], scenario: Scenario
    ) -> _SimulatedCall:
        call = _SimulatedCall(
            sid=uuid.uuid4().hex,
            account_sid=self.config.account_sid,
            from_number=fields["From"],
            to_number=fields["To"],
            caller_id=fields["CallerId"],
            custom_field=fields.get("CustomField"),
            record=fields.get("Record", "").strip().lower() == "true",
            status_callback=fields.get("StatusCallback") or None,
            callback_events=callback_events,
            callback_as_json=fields.get("StatusCallbackContentType", "").strip().lower()
            == "application/json",
            scenario=scenario,
            plan=_plan_for(scenario, _ring_timeout(fields.get("TimeOut"))),
            created_at=datetime.now(EXOTEL_TIMEZONE).replace(microsecond=0),
        )
        self._calls[call.sid] = call
        return call

    # The call timeline and its callbacks.

    async def _play(self, call: _SimulatedCall, *, in_real_time: bool) -> None:
        """Walk the call through its plan, then send its callbacks as its scenario says."""
        plan = call.plan

        async def let_pass(simulated_s: int) -> None:
            if in_real_time:
                await asyncio.sleep(simulated_s / self.config.speed)

        await let_pass(plan.from_ring_s)
        if not plan.from_answers:
            call.caller_not_answered(at_s=plan.from_ring_s)
        else:
            call.caller_answered(at_s=plan.from_ring_s)
            await let_pass(plan.to_ring_s)
            connected_at_s = plan.from_ring_s + plan.to_ring_s
            if plan.to_outcome != "completed":
                call.callee_not_connected(plan.to_outcome, at_s=connected_at_s)
            else:
                call.callee_answered(at_s=connected_at_s)
                await self._announce_answered(call, in_real_time=in_real_time)
                await let_pass(plan.talk_s)
                call.hung_up(at_s=connected_at_s + plan.talk_s)
        logger.info("call %s ended: %s", call.sid, call.status)
        await self._announce_terminal(call)

    async def _announce_answered(self, call: _SimulatedCall, *, in_real_time: bool) -> None:
        payload = call.callback_payload("answered")
        if call.scenario is Scenario.STALE_ANSWERED:
            call.held_answered_callback = payload
        elif "answered" in call.callback_events and self._sends_callbacks(call):
            delivery = self._deliver(call, payload)
            # Exotel does not hold the call up while a webhook is delivered.
            if in_real_time:
                self._spawn(delivery)
            else:
                await delivery

    async def _announce_terminal(self, call: _SimulatedCall) -> None:
        if not self._sends_callbacks(call):
            return
        payload = call.callback_payload("terminal" if "terminal" in call.callback_events else None)
        copies = DUPLICATED_CALLBACK_COPIES if call.scenario is Scenario.DUPLICATED_CALLBACK else 1
        for _ in range(copies):
            await self._deliver(call, payload)
        if call.held_answered_callback is not None:
            await self._deliver(call, call.held_answered_callback)

    @staticmethod
    def _sends_callbacks(call: _SimulatedCall) -> bool:
        return call.status_callback is not None and call.scenario is not Scenario.NO_CALLBACK

    async def _deliver(self, call: _SimulatedCall, payload: dict[str, Any]) -> None:
        """POST one callback like Exotel: a failure (non-2xx, no answer) is retried twice."""
        assert call.status_callback is not None
        encode = _exotel_json_body if call.callback_as_json else _multipart_body
        content, content_type = encode(payload)
        event = payload.get("EventType") or "default"
        for attempt in range(1, CALLBACK_ATTEMPTS + 1):
            try:
                response = await self._callback_client.post(
                    call.status_callback, content=content, headers={"Content-Type": content_type}
                )
            except httpx.HTTPError as exc:
                failure = type(exc).__name__
            else:
                if response.is_success:
                    return
                failure = f"HTTP {response.status_code}"
            # The callback URL is not logged: it carries the receiver's secret token.
            logger.warning(
                "%s callback of call %s failed (attempt %d of %d): %s",
                event,
                call.sid,
                attempt,
                CALLBACK_ATTEMPTS,
                failure,
            )
            if attempt < CALLBACK_ATTEMPTS:
                await asyncio.sleep(CALLBACK_RETRY_PAUSE_S / self.config.speed)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            logger.error("simulated call work failed", exc_info=error)


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m app.exotel.simulator", description="Run the Exotel simulator."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9911)
    parser.add_argument(
        "--speed",
        type=float,
        default=SimulatorConfig.speed,
        help="simulated seconds per real second (default %(default)s)",
    )
    arguments = parser.parse_args()
    serve_simulator(host=arguments.host, port=arguments.port, speed=arguments.speed)


def serve_simulator(*, host: str, port: int, speed: float) -> None:
    """Serve a simulator with the default credentials until interrupted."""
    logging.basicConfig(level=logging.INFO)
    simulator = Simulator(SimulatorConfig(speed=speed))
    uvicorn.run(simulator.app, host=host, port=port)


if __name__ == "__main__":
    main()
