"""respx for the Exotel client's own transport (app/exotel/transport.py).

respx's default mocker patches httpcore, which the Exotel client no longer goes through.
This one patches `AiohttpTransport.handle_async_request` the way respx patches httpcore's
pools: every request the client sends reaches the router, already an httpx.Request, and
what the router answers (or raises) comes back as the transport's answer. Other clients
(the relay's, the simulator's) are left alone. Use `respx.mock(using=EXOTEL_WIRE)`.
"""

from __future__ import annotations

from typing import Any

import httpx
from respx.mocks import AbstractRequestMocker

EXOTEL_WIRE = "exotel-wire"


class ExotelWireMocker(AbstractRequestMocker):
    name = EXOTEL_WIRE
    targets = ["app.exotel.transport.AiohttpTransport"]
    target_methods = ["handle_async_request"]

    @classmethod
    def to_httpx_request(cls, **kwargs: Any) -> httpx.Request:
        request: httpx.Request = kwargs["request"]
        return request

    @classmethod
    async def from_async_httpx_response(
        cls, httpx_response: httpx.Response, target: Any, **kwargs: Any
    ) -> httpx.Response:
        # A new response on the same bytes, for the client to read (or stream) afresh.
        return httpx.Response(
            httpx_response.status_code,
            headers=httpx_response.headers,
            stream=httpx_response.stream,
            extensions=httpx_response.extensions,
        )
