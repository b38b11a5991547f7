"""The simulator's HTTP side: Exotel's connect, call-details, bulk call-details and
recording routes, with Exotel's auth, its 200-a-minute limit and its error bodies.

URIs in answers (`Uri`, `NextPageUri`) start at `/v1/...`, relative to wherever the
app is mounted, as Exotel's are relative to its API host.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import secrets
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Final

import httpx
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from app.exotel.schemas import EXOTEL_TIMEZONE
from app.exotel.simulator.config import SimulatorConfig
from app.exotel.simulator.listing import ListingQuery, page_of, paged_answer
from app.exotel.simulator.player import CallbackPlayer
from app.exotel.simulator.recording import recording_response
from app.exotel.simulator.scenarios import (
    RATE_LIMIT_EXCEEDED,
    UNAUTHORIZED,
    Refusal,
    Scenario,
    lost_answer_talk_s,
    plan_for,
    refusal_for,
    ring_timeout,
    scenario_for,
    time_limit,
)
from app.exotel.simulator.state import SimulatedCall
from app.exotel.simulator.store import CallStore
from app.exotel.simulator.wire import (
    answer,
    bad_request,
    masked,
    national,
    not_found,
    rest_exception,
)

logger = logging.getLogger(__name__)

WINDOW_S: Final = 60.0

Endpoint = Callable[[Request], Awaitable[Response]]


class SlidingWindowLimit:
    """At most `limit` requests in any `WINDOW_S` seconds, per account, like Exotel."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self._sent: dict[str, deque[float]] = {}

    def admit(self, account_sid: str) -> int | None:
        """Count one request and return what is left of the window; None when refused."""
        if self.limit is None:
            return None
        now = time.monotonic()
        sent = self._sent.setdefault(account_sid, deque())
        while sent and sent[0] <= now - WINDOW_S:
            sent.popleft()
        if len(sent) >= self.limit:
            return None
        sent.append(now)
        return self.limit - len(sent)


class ExotelRoutes:
    def __init__(
        self,
        config: SimulatorConfig,
        store: CallStore,
        player: CallbackPlayer,
        connect_requests: list[dict[str, str]],
        ready: Callable[[], Awaitable[None]],
    ) -> None:
        self._config = config
        self._store = store
        self._player = player
        self._connect_requests = connect_requests
        self._ready = ready
        self._limit = SlidingWindowLimit(config.requests_per_minute)
        calls = "/v1/Accounts/{account_sid}/Calls"
        self.routes = [
            Route(f"{calls}/connect.json", self._api(self._connect_json), methods=["POST"]),
            Route(
                f"{calls}/connect", self._api(self._connect_xml, as_json=False), methods=["POST"]
            ),
            Route(f"{calls}.json", self._api(self._list_calls), methods=["GET"]),
            Route(calls + "/{call_sid}.json", self._api(self._call_details), methods=["GET"]),
            # Recordings are not voice API requests: outside the 200 a minute.
            Route(
                "/exotelrecordings/{account_sid}/{call_sid}.wav",
                self._api(self._recording, limited=False),
                methods=["GET"],
            ),
            Route("/_sim/requests", self._test_support(self._recorded), methods=["GET"]),
            Route("/_sim/requests", self._test_support(self._forget), methods=["DELETE"]),
        ]

    # Auth and the rate limit, around every route.

    def _api(self, handler: Endpoint, *, as_json: bool = True, limited: bool = True) -> Endpoint:
        async def endpoint(request: Request) -> Response:
            await self._ready()
            account_sid = request.path_params["account_sid"]
            if not (self._known_account(account_sid) and self._authenticated(request)):
                return rest_exception(UNAUTHORIZED, as_json=as_json)
            if not limited or self._limit.limit is None:
                return await handler(request)
            remaining = self._limit.admit(account_sid)
            if remaining is None:
                response = rest_exception(RATE_LIMIT_EXCEEDED, as_json=as_json)
                remaining = 0
            else:
                response = await handler(request)
            response.headers["X-RateLimit-Limit"] = str(self._limit.limit)
            response.headers["X-RateLimit-Remaining"] = str(remaining)
            return response

        return endpoint

    def _test_support(self, handler: Endpoint) -> Endpoint:
        """Routes for tests: the simulator's own credentials, as for its Exotel routes.
        What they show (numbers, callback URLs with their tokens) is not for anyone."""

        async def endpoint(request: Request) -> Response:
            if not self._authenticated(request):
                return rest_exception(UNAUTHORIZED)
            return await handler(request)

        return endpoint

    def _known_account(self, account_sid: str) -> bool:
        return secrets.compare_digest(account_sid.encode(), self._config.account_sid.encode())

    def _authenticated(self, request: Request) -> bool:
        scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            credentials = base64.b64decode(encoded, validate=True)
        except binascii.Error:
            return False
        expected = f"{self._config.api_key}:{self._config.api_token}".encode()
        return secrets.compare_digest(credentials, expected)

    # Connect.

    async def _connect_json(self, request: Request) -> Response:
        return await self._connect(request, as_json=True)

    async def _connect_xml(self, request: Request) -> Response:
        return await self._connect(request, as_json=False)

    async def _connect(self, request: Request, *, as_json: bool) -> Response:
        form = await request.form()
        asked = _form_fields(form)
        self._connect_requests.append(asked)
        for mandatory in ("From", "To", "CallerId"):
            if not asked.get(mandatory, "").strip():
                missing = Refusal(400, f"{mandatory} is a mandatory parameter")
                return rest_exception(missing, as_json=as_json)
        scenario = scenario_for(asked["To"])
        logger.info("connect to %s: scenario %s", masked(asked["To"]), scenario.value)
        refusal = refusal_for(scenario, national(asked["To"]))
        if refusal is not None:
            return rest_exception(refusal, as_json=as_json)
        if scenario is Scenario.SLOW_ANSWER:
            await asyncio.sleep(self._config.slow_answer_s)
        call = self._new_call(request, asked, _callback_events(form), scenario)
        await self._store.add(call)
        # Rendered now: when the callback comes first, the answer still says in-progress,
        # like a reply that lost the race against its own callback.
        fields = call.connect_answer()
        if not as_json:  # Exotel's XML sample spells the Uri without ".json"
            fields["Uri"] = fields["Uri"].replace("/Calls.json/", "/Calls/")
        reply = answer("Call", fields, as_json=as_json)
        if scenario is Scenario.CALLBACK_BEFORE_ANSWER:
            await self._player.play(call)
        else:
            self._player.start(call)
        if scenario.answer_is_lost:
            return _DroppedAnswer(self._config.lost_answer_hang_s)
        return reply

    def _new_call(
        self,
        request: Request,
        fields: dict[str, str],
        callback_events: frozenset[str],
        scenario: Scenario,
    ) -> SimulatedCall:
        config = self._config
        plan = plan_for(
            scenario,
            ring_timeout_s=ring_timeout(fields.get("TimeOut")),
            time_limit_s=time_limit(fields.get("TimeLimit")),
            lost_answer_talk_s=lost_answer_talk_s(config.lost_answer_hang_s, config.speed),
        )
        return SimulatedCall(
            sid=uuid.uuid4().hex,
            account_sid=config.account_sid,
            from_number=fields["From"],
            to_number=fields["To"],
            caller_id=fields["CallerId"],
            custom_field=fields.get("CustomField"),
            record=fields.get("Record", "").strip().lower() == "true",
            status_callback=fields.get("StatusCallback") or None,
            callback_events=tuple(sorted(callback_events)),
            callback_as_json=fields.get("StatusCallbackContentType", "").strip().lower()
            == "application/json",
            scenario=scenario,
            plan=plan,
            created_at=datetime.now(EXOTEL_TIMEZONE),
            speed=config.speed,
            # The call ends at once, so that its callback can come before the answer.
            head_start_s=plan.end_s if scenario is Scenario.CALLBACK_BEFORE_ANSWER else 0,
            recording_root=str(request.base_url).rstrip("/"),
        )

    # Call details, one and in bulk.

    async def _call_details(self, request: Request) -> Response:
        call = await self._store.get(
            request.path_params["account_sid"], request.path_params["call_sid"]
        )
        if call is None:
            return not_found("Call not found")
        with_details = request.query_params.get("details", "").lower() == "true"
        return JSONResponse({"Call": self._exotel_json(call, with_details)})

    async def _list_calls(self, request: Request) -> Response:
        """Bulk call details: never ongoing calls; paged in the configured shape."""
        now = datetime.now(UTC)
        account_sid = request.path_params["account_sid"]
        try:
            query = ListingQuery.read(request.query_params, now)
            found = await self._store.find(
                account_sid,
                sids=query.sids,
                created_from=query.created_from,
                created_to=query.created_to,
                ended_by=now,
            )
            listed = [call for call in found if query.matches(call)]
            page = page_of(listed, query)
        except ValueError as exc:
            return bad_request(str(exc))
        answer = paged_answer(
            self._config.paging,
            path=f"/v1/Accounts/{account_sid}/Calls.json",
            raw_query=request.query_params,
            query=query,
            listed=listed,
            page=page,
            calls=[self._exotel_json(call, query.with_details) for call in page.calls],
        )
        return JSONResponse(answer)

    def _exotel_json(self, call: SimulatedCall, with_details: bool) -> dict[str, Any]:
        return call.exotel_json(
            datetime.now(UTC),
            with_details=with_details,
            figures_delay_s=self._config.figures_delay_s,
        )

    # Recordings and test support.

    async def _recording(self, request: Request) -> Response:
        call = await self._store.get(
            request.path_params["account_sid"], request.path_params["call_sid"]
        )
        if call is None or not call.has_recording(datetime.now(UTC)):
            return not_found("Recording not found")
        return recording_response(request.headers.get("range"))

    async def _recorded(self, _request: Request) -> Response:
        return JSONResponse(self._connect_requests)

    async def _forget(self, _request: Request) -> Response:
        self._connect_requests.clear()
        return Response(status_code=204)


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
