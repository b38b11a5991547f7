"""The OpenAPI document behind /docs, completed where FastAPI's generator falls short."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute, iter_route_contexts
from pydantic import BaseModel

from app.calls.schemas import CallCreate
from app.errors import ProblemDetails

# Schemas that operations refer to by `$ref` but that no route declares as a model: the
# Problem of every error response, and the body of POST /calls, whose endpoint takes the
# bare request (app/calls/router.py).
_REFERRED_SCHEMAS: dict[str, type[BaseModel]] = {
    "Problem": ProblemDetails,
    "CallCreate": CallCreate,
}


def _add_referred_schemas(document: dict[str, Any]) -> None:
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    for name, model in _REFERRED_SCHEMAS.items():
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[name] = schema


def _restore_response_examples(app: FastAPI, document: dict[str, Any]) -> None:
    """Put back the response examples as written.

    FastAPI encodes the document with `exclude_none`, which also strips every null out
    of the examples, leaving a call resource without its (nullable, required) fields.
    """
    for route in iter_route_contexts(app.routes):
        if (
            not isinstance(route.original_route, APIRoute)
            or not route.original_route.include_in_schema
            or route.path_format is None
        ):
            continue
        for method in route.methods or ():
            operation = document["paths"][route.path_format].get(method.lower())
            if operation is None:
                continue
            for status, response in route.responses.items():
                for media_type, media in response.get("content", {}).items():
                    documented = operation["responses"][str(status)]["content"][media_type]
                    for key in ("example", "examples"):
                        if key in media:
                            documented[key] = media[key]


def install_openapi(app: FastAPI, *, extra_operations: dict[str, dict[str, Any]]) -> None:
    """Complete the document; `extra_operations` (path -> method -> operation) documents
    the plain Starlette routes, which FastAPI's generator does not see."""
    generate = app.openapi
    completed: dict[str, Any] | None = None

    def openapi() -> dict[str, Any]:
        nonlocal completed
        # FastAPI regenerates the document when routes change (a mount in the lifespan).
        document = generate()
        if document is not completed:
            for path, operations in extra_operations.items():
                document["paths"].setdefault(path, {}).update(operations)
            _add_referred_schemas(document)
            _restore_response_examples(app, document)
            completed = document
        return document

    app.openapi = openapi  # type: ignore[method-assign]
