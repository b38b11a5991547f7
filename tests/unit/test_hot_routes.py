"""Which paths a hot route (app.middleware.HotRoute) answers: exactly those FastAPI's
route of the same template would, so that moving a route in front of the routing
changes no answer."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from app.middleware import HotRoute


async def endpoint(request: Request) -> Response:
    return Response()


def test_a_literal_template_matches_only_its_own_path() -> None:
    route = HotRoute("POST", "/callbacks/exotel", endpoint)

    assert route.match("/callbacks/exotel") == {}
    for other in ("/callbacks/exotel/", "/callbacks/exotelx", "/callbacks", "/"):
        assert route.match(other) is None


def test_a_parameter_matches_one_whole_segment() -> None:
    route = HotRoute("GET", "/calls/{ref}", endpoint)

    assert route.match("/calls/a1b2c3") == {"ref": "a1b2c3"}
    assert route.match("/calls/with space") == {"ref": "with space"}
    # The events and the recording of a call, a trailing slash (redirected by FastAPI),
    # and the list are other routes.
    for other in ("/calls/a1b2c3/events", "/calls/a1b2c3/", "/calls/", "/calls", "/callsx/a"):
        assert route.match(other) is None
