"""One error type, one problem+json (RFC 9457) handler for everything a client can see."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = structlog.get_logger(__name__)

PROBLEM_CONTENT_TYPE = "application/problem+json"
PROBLEM_TYPE_BASE = "https://callbridge.internal/problems/"


class ProblemResponse(JSONResponse):
    media_type = PROBLEM_CONTENT_TYPE


class Problem(Exception):
    """An error answered to the client as problem+json."""

    def __init__(
        self,
        status: int,
        slug: str,
        detail: str,
        *,
        errors: Sequence[Mapping[str, str]] | None = None,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.slug = slug
        self.detail = detail
        self.errors = errors
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": PROBLEM_TYPE_BASE + self.slug,
            "title": HTTPStatus(self.status).phrase,
            "status": self.status,
            "detail": self.detail,
        }
        if self.errors is not None:
            body["errors"] = [dict(error) for error in self.errors]
        body.update(self.extra)
        return body

    def response(self) -> ProblemResponse:
        return ProblemResponse(self.body(), status_code=self.status, headers=self.headers)


def validation_problem(errors: Sequence[Mapping[str, str]]) -> Problem:
    fields = ", ".join(dict.fromkeys(error["field"] for error in errors))
    return Problem(422, "validation-error", f"Invalid request: {fields}", errors=errors)


def _field_name(location: Sequence[int | str]) -> str:
    # Drop the "body"/"query"/"header" prefix FastAPI puts first.
    parts = [str(part) for part in location[1:]] or [str(part) for part in location]
    return ".".join(parts)


def _from_request_validation(exc: RequestValidationError) -> Problem:
    errors = []
    for error in exc.errors():
        message = str(error.get("msg", "invalid"))
        if error.get("type") == "extra_forbidden":
            message = "Unknown field"
        errors.append({"field": _field_name(error.get("loc", ())), "message": message})
    return validation_problem(errors)


def install_error_handlers(app: FastAPI) -> None:
    async def on_problem(_: Request, exc: Exception) -> ProblemResponse:
        assert isinstance(exc, Problem)
        return exc.response()

    async def on_validation(_: Request, exc: Exception) -> ProblemResponse:
        assert isinstance(exc, RequestValidationError)
        return _from_request_validation(exc).response()

    async def on_http(_: Request, exc: Exception) -> ProblemResponse:
        assert isinstance(exc, StarletteHTTPException)
        slug = HTTPStatus(exc.status_code).phrase.lower().replace(" ", "-")
        detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
        headers = dict(exc.headers or {})
        return Problem(exc.status_code, slug, detail, headers=headers).response()

    async def on_unexpected(request: Request, exc: Exception) -> ProblemResponse:
        log.exception("unhandled_error", path=request.url.path)
        return Problem(500, "internal-error", "Something went wrong on our side").response()

    app.add_exception_handler(Problem, on_problem)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_unexpected)
