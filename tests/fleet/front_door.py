"""Exotel's front door for the fleet test: a proxy before the simulator that notes the
time and kind of every request, and answers 429 past 200 in any 60 s, as Exotel does.

Every Callbridge process reaches "Exotel" through it, so what it records is what Exotel
would have received from the whole fleet, in the order and at the times it arrived.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from urllib.parse import parse_qs

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

WINDOW_S = 60.0


@dataclass(frozen=True)
class Arrival:
    at: float  # time.time()
    operation: str  # connect, call_details, bulk_details
    status: int
    status_callback: str = ""  # connect requests: names the call


def operation_of(method: str, path: str) -> str:
    if method == "POST":
        return "connect"
    return "bulk_details" if path.endswith("/Calls.json") else "call_details"


@dataclass
class FrontDoor:
    upstream: httpx.AsyncClient  # base_url: the simulator
    limit: int
    arrivals: list[Arrival] = field(default_factory=list)
    _accepted: deque[float] = field(default_factory=deque)

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/{path:path}", self._forward, methods=["GET", "POST"])])

    def _over_limit(self, now: float) -> bool:
        while self._accepted and self._accepted[0] < now - WINDOW_S:
            self._accepted.popleft()
        if len(self._accepted) >= self.limit:
            return True
        self._accepted.append(now)
        return False

    async def _forward(self, request: Request) -> Response:
        now = time.time()
        body = await request.body()
        operation = operation_of(request.method, request.url.path)
        callback = ""
        if operation == "connect":
            callback = parse_qs(body.decode()).get("StatusCallback", [""])[0]
        if self._over_limit(now):
            self.arrivals.append(Arrival(now, operation, 429, callback))
            return JSONResponse(
                {"RestException": {"Status": 429, "Message": "Too many requests"}},
                status_code=429,
                headers={"Retry-After": "30"},
            )
        answer = await self.upstream.request(
            request.method,
            request.url.path,
            params=request.query_params,
            content=body,
            headers={
                name: value
                for name, value in request.headers.items()
                if name in ("authorization", "content-type", "accept")
            },
        )
        self.arrivals.append(Arrival(now, operation, answer.status_code, callback))
        return Response(
            answer.content,
            status_code=answer.status_code,
            media_type=answer.headers.get("content-type"),
        )
