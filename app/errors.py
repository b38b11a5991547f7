"""One error type, one problem+json (RFC 9457) handler for everything a client can see."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

import psycopg
import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

log = structlog.get_logger(__name__)

PROBLEM_CONTENT_TYPE = "application/problem+json"
PROBLEM_TYPE_BASE = "https://callbridge.internal/problems/"
# What a lost or refused database connection, or an exhausted pool, raises: through
# SQLAlchemy, or on the hot paths' plain psycopg pool (whose PoolTimeout is an
# OperationalError).
DATABASE_DOWN_ERRORS = (
    OperationalError,
    InterfaceError,
    PoolTimeout,
    psycopg.OperationalError,
    psycopg.InterfaceError,
)
DATABASE_RETRY_AFTER_S = 5


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


class HTTPProblem(StarletteHTTPException):
    """A Problem raised from inside `receive`.

    FastAPI turns anything raised while it reads the body into a 400, except
    HTTPExceptions, which it lets through to the handlers.
    """

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem.status, problem.detail, problem.headers)
        self.problem = problem


def database_unavailable() -> Problem:
    return Problem(
        503,
        "database-unavailable",
        "The database is not reachable; retry shortly",
        headers={"Retry-After": str(DATABASE_RETRY_AFTER_S)},
    )


class FieldError(BaseModel):
    field: str = Field(description="The field at fault, dotted for nested ones")
    message: str


class ProblemDetails(BaseModel):
    """Every error answer: RFC 9457 problem details, as `application/problem+json`."""

    model_config = ConfigDict(title="Problem", extra="allow")

    type: str = Field(description="A URI naming the kind of problem; match on this, not on text")
    title: str = Field(description="The HTTP status phrase")
    status: int
    detail: str = Field(description="What went wrong, for people")
    errors: list[FieldError] | None = Field(
        None, description="For validation errors (422): each field at fault"
    )


PROBLEM_SCHEMA_REF = {"$ref": "#/components/schemas/Problem"}


def problem_response(
    description: str, *examples: Problem, headers: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """An OpenAPI response: problem+json with an example per way this status can happen.

    `headers` names response headers (documented as strings) with their meaning.
    """
    content: dict[str, Any] = {"schema": PROBLEM_SCHEMA_REF}
    if len(examples) == 1:
        content["example"] = examples[0].body()
    else:
        content["examples"] = {example.slug: {"value": example.body()} for example in examples}
    response: dict[str, Any] = {
        "description": description,
        "content": {PROBLEM_CONTENT_TYPE: content},
    }
    if headers:
        response["headers"] = {
            name: {"description": meaning, "schema": {"type": "string"}}
            for name, meaning in headers.items()
        }
    return response


SERVER_PROBLEMS: dict[int | str, dict[str, Any]] = {
    500: problem_response(
        "A bug in Callbridge; quote the X-Request-ID response header when reporting it",
        Problem(500, "internal-error", "Something went wrong on our side"),
    ),
    503: problem_response(
        "The database is not reachable",
        database_unavailable(),
        headers={"Retry-After": "Seconds to wait before retrying"},
    ),
}


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


def _problem_of(request: Request, exc: Exception) -> Problem:
    if isinstance(exc, Problem):
        return exc
    if isinstance(exc, HTTPProblem):
        return exc.problem
    if isinstance(exc, RequestValidationError):
        return _from_request_validation(exc)
    if isinstance(exc, StarletteHTTPException):
        slug = HTTPStatus(exc.status_code).phrase.lower().replace(" ", "-")
        detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
        return Problem(exc.status_code, slug, detail, headers=dict(exc.headers or {}))
    if isinstance(exc, DATABASE_DOWN_ERRORS):
        reason = exc.orig if isinstance(exc, DBAPIError) else exc
        log.warning("database_unavailable", error=type(reason).__name__, reason=str(reason))
        return database_unavailable()
    # Under FastAPI this runs outside the request-log middleware: its context (the request
    # id bound to log lines, the header it adds to answers) is gone by now.
    request_id: str | None = getattr(request.state, "request_id", None)
    log.exception("unhandled_error", request_id=request_id)
    headers = {"X-Request-ID": request_id} if request_id else None
    return Problem(500, "internal-error", "Something went wrong on our side", headers=headers)


async def problem_answer(request: Request, exc: Exception) -> ProblemResponse:
    """The problem+json answer to an exception: FastAPI's handler for every kind of error,
    and the hot routes' (app/middleware.py)."""
    return _problem_of(request, exc).response()


def install_error_handlers(app: FastAPI) -> None:
    for error in (
        Problem,
        RequestValidationError,
        StarletteHTTPException,
        *DATABASE_DOWN_ERRORS,
        Exception,
    ):
        app.add_exception_handler(error, problem_answer)
