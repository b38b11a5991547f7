"""Pure ASGI middleware: the request log (with HTTP metrics), the request body limits, and
the hot routes answered in front of FastAPI's routing.

Pure ASGI rather than BaseHTTPMiddleware: nothing is buffered, the request id bound
here reaches every log line of the request (same task, same contextvars), and a body
can be refused while it streams in.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence

import structlog
from prometheus_client import Counter, Histogram
from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import HTTPProblem, Problem, problem_answer
from app.metrics import HTTP_REQUEST_DURATION, HTTP_REQUESTS

log = structlog.get_logger("app.requests")

# Requests to Callbridge are a few KiB at most (POST /calls with four long URLs).
MAX_BODY_BYTES = 64 * 1024
# A few KiB take milliseconds; a client dripping a byte a second would hold its
# connection (and a worker's memory) for as long as it liked. Headers are uvicorn's to
# bound (README, Limits).
BODY_READ_TIMEOUT_S = 10.0
# What the log and the metrics say of a request whose client left before its answer (as
# nginx counts it): no error of ours, nobody got a 500.
CLIENT_CLOSED = 499
REQUEST_ID_HEADER = "X-Request-ID"
# A caller's id is kept if it could not smuggle anything into a log line or a header.
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Probes and scrapes arrive every few seconds; at info they would drown the log.
QUIET_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})
# Successful reads (dashboards poll) and acknowledged callbacks (several per call) are
# most of the traffic: the metrics count them, and a line each at info would cost more
# CPU than answering them. They are logged at debug; what fails, or places a call, at info.
ROUTINE_WHEN_OK = "/callbacks/exotel"
# The built-in simulator of simulator mode (app.main.SIMULATOR_PREFIX) answers its
# deliberate 4xx/5xx there: its traffic is Exotel's, not the service's, so it is neither
# counted in the HTTP metrics (an alert on 5xx would fire) nor logged as requests.
NOT_THE_SERVICE = "/simulator/"
UNMATCHED_ROUTE = "unmatched"


def _request_id(scope: Scope) -> str:
    given = Headers(scope=scope).get(REQUEST_ID_HEADER)
    if given is not None and _SANE_REQUEST_ID.fullmatch(given):
        return given
    return secrets.token_hex(16)


def _route_template(scope: Scope) -> str:
    """The matched route's template (`/calls/{ref}`), never the raw path, which holds ids."""
    path = getattr(scope.get("route"), "path", None)
    if isinstance(path, str):
        # Inside a mounted app, route paths are relative to the mount point.
        return str(scope.get("root_path", "")) + path
    # Plain routes (/docs, /openapi.json) leave no route in the scope; one without
    # path parameters is its own template.
    if "endpoint" in scope and not scope.get("path_params"):
        return str(scope["path"])
    return UNMATCHED_ROUTE


@functools.cache
def _metrics(method: str, route: str, status: int) -> tuple[Counter, Histogram]:
    """The request's metrics; looked up once per kind of request (a few dozen in all),
    not on every request."""
    return (
        HTTP_REQUESTS.labels(method, route, str(status)),
        HTTP_REQUEST_DURATION.labels(method, route),
    )


class RequestLogMiddleware:
    """One log line and one metrics sample per HTTP request.

    The line carries the request id (also echoed in X-Request-ID), the API client
    (set by app.auth), the route template, status and duration; no path or query
    string, so no callback token or phone number can reach it.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or str(scope["path"]).startswith(NOT_THE_SERVICE):
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope)
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        status = 500
        responded = client_left = False
        started = time.perf_counter()

        async def receive_noting_disconnect() -> Message:
            nonlocal client_left
            message = await receive()
            if message["type"] == "http.disconnect" and not responded:
                client_left = True
            return message

        async def send_with_request_id(message: Message) -> None:
            nonlocal status, responded
            if message["type"] == "http.response.start":
                status = message["status"]
                responded = True
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        # Bound and reset by hand: structlog's bound_contextvars, a generator-based context
        # manager, costs more than the rest of this middleware's bookkeeping.
        bound = structlog.contextvars.bind_contextvars(request_id=request_id)
        try:
            try:
                await self.app(scope, receive_noting_disconnect, send_with_request_id)
            except ClientDisconnect:
                # The client left mid-upload: nobody is there to answer, and nothing
                # failed on our side, so this is no unhandled error.
                client_left = True
            except Exception:
                if not client_left:
                    raise
            finally:
                duration = time.perf_counter() - started
                if client_left:
                    status = CLIENT_CLOSED
                route = _route_template(scope)
                method = scope["method"] if scope["method"] in _METHODS else "other"
                requests, durations = _metrics(method, route, status)
                requests.inc()
                durations.observe(duration)
                quiet = (route in QUIET_ROUTES and status < 500) or (
                    status < 400 and (method == "GET" or route == ROUTINE_WHEN_OK)
                )
                # Most requests are quiet and debug is off: skip building a line to drop.
                if not quiet or log.isEnabledFor(logging.DEBUG):
                    (log.debug if quiet else log.info)(
                        "request",
                        method=method,
                        route=route,
                        status=status,
                        duration_ms=round(duration * 1000, 1),
                        client=state.get("api_client"),
                        **({"outcome": "client_closed"} if client_left else {}),
                    )
        finally:
            structlog.contextvars.reset_contextvars(**bound)


class BodyLimitsMiddleware:
    """Refuse request bodies over `max_bytes` (413) or slower than `timeout_s` (408).

    A declared Content-Length over the limit is refused before the app runs; a chunked
    body is counted as it streams and refused at the chunk that crosses the limit. The
    time runs from the app's first read of the body to its last chunk.
    """

    def __init__(
        self, app: ASGIApp, max_bytes: int, timeout_s: float = BODY_READ_TIMEOUT_S
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    def _too_large(self) -> Problem:
        return Problem(
            413, "body-too-large", f"The request body may not exceed {self.max_bytes} bytes"
        )

    def _too_slow(self) -> Problem:
        return Problem(
            408,
            "body-timeout",
            f"The request body did not arrive within {self.timeout_s:g} s",
            # The rest of the body is never read: the connection cannot serve another.
            headers={"Connection": "close"},
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._too_large().response()(scope, receive, send)
            return
        received = 0
        deadline: float | None = None
        body_done = False

        async def limited_receive() -> Message:
            nonlocal received, deadline, body_done
            if body_done:
                # Only a disconnect can come now; waiting for it is not reading a body.
                return await receive()
            loop = asyncio.get_running_loop()
            deadline = deadline or loop.time() + self.timeout_s
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise HTTPProblem(self._too_slow()) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPProblem(self._too_large())
                body_done = not message.get("more_body", False)
            return message

        await self.app(scope, limited_receive, send)


class HotRoute:
    """A route `HotRoutes` answers itself. `path` is its template, as FastAPI's: literal,
    or with one parameter at its end (`/calls/{ref}`), which matches one path segment."""

    def __init__(
        self, method: str, path: str, endpoint: Callable[[Request], Awaitable[Response]]
    ) -> None:
        self.method = method
        self.path = path
        self.endpoint = endpoint
        prefix, brace, parameter = path.partition("{")
        self._prefix = prefix
        self._parameter = parameter.removesuffix("}") if brace else None

    def match(self, path: str) -> dict[str, str] | None:
        """The path parameters if `path` is this route's, else None."""
        if self._parameter is None:
            return {} if path == self._prefix else None
        value = path[len(self._prefix) :]
        if not path.startswith(self._prefix) or not value or "/" in value:
            return None
        return {self._parameter: value}


class HotRoutes:
    """Answers the hot routes (callbacks, the call dashboards poll) in front of FastAPI's
    routing.

    The layers between the middlewares and an endpoint (exception middleware, routers,
    route matching, the endpoint's wrappers) cost more CPU than these endpoints' own work
    (bench/README.md). Their endpoints take the bare request and check what they need
    themselves; their errors get the answers FastAPI's handlers give (`problem_answer`).
    The routes stay registered with FastAPI too: it answers their other methods (405),
    and documents them.
    """

    def __init__(self, app: ASGIApp, routes: Sequence[HotRoute]) -> None:
        self.app = app
        self.routes = tuple(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for route in self.routes:
                if route.method == scope["method"]:
                    path_params = route.match(scope["path"])
                    if path_params is not None:
                        await self._answer(route, path_params, scope, receive, send)
                        return
        await self.app(scope, receive, send)

    @staticmethod
    async def _answer(
        route: HotRoute, path_params: dict[str, str], scope: Scope, receive: Receive, send: Send
    ) -> None:
        # As Starlette's routing would: the request log names the route by its template.
        scope["route"] = route
        scope["endpoint"] = route.endpoint
        scope["path_params"] = path_params
        request = Request(scope, receive)
        try:
            response = await route.endpoint(request)
        except ClientDisconnect:
            raise  # nobody is left to answer; the request log counts it
        except Exception as exc:
            response = await problem_answer(request, exc)
        await response(scope, receive, send)
