"""The API documentation: every operation summarised, every request and answer exemplified,
every error a documented Problem, and every example valid against its own schema."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from jsonschema_rs import Draft202012Validator

from app.errors import PROBLEM_CONTENT_TYPE
from app.main import create_app

Document = dict[str, Any]


@pytest.fixture(scope="module")
def document() -> Document:
    doc: Document = create_app().openapi()
    return doc


def operations(document: Document) -> Iterator[tuple[str, Document]]:
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            yield f"{method.upper()} {path}", operation


def examples(media: Document) -> list[Any]:
    if "example" in media:
        return [media["example"]]
    return [example["value"] for example in media.get("examples", {}).values()]


def validator(document: Document, schema: Document) -> Draft202012Validator:
    # `$ref`s point into the document's components: give them the document as root.
    return Draft202012Validator({**schema, "components": document["components"]})


async def test_the_docs_are_served(app: FastAPI) -> None:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://callbridge.test"
    ) as http:
        docs, schema = await http.get("/docs"), await http.get("/openapi.json")

    assert docs.status_code == 200
    assert "swagger-ui" in docs.text
    assert schema.status_code == 200
    assert schema.json()["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


def test_every_operation_has_a_summary(document: Document) -> None:
    missing = [name for name, operation in operations(document) if not operation.get("summary")]
    assert missing == []


def test_every_request_body_has_valid_examples(document: Document) -> None:
    for name, operation in operations(document):
        for media_type, media in operation.get("requestBody", {}).get("content", {}).items():
            found = examples(media)
            assert found, f"{name} {media_type}: no example"
            for example in found:
                validator(document, media["schema"]).validate(example)


def test_every_response_has_valid_examples_and_errors_are_problems(document: Document) -> None:
    for name, operation in operations(document):
        for status, response in operation["responses"].items():
            where = f"{name} {status}"
            assert response.get("description"), where
            content = response.get("content", {})
            assert content, f"{where}: no content"
            if int(status) >= 400:
                assert list(content) == [PROBLEM_CONTENT_TYPE], where
                assert content[PROBLEM_CONTENT_TYPE]["schema"] == {
                    "$ref": "#/components/schemas/Problem"
                }, where
            for media_type, media in content.items():
                found = examples(media)
                assert found, f"{where} {media_type}: no example"
                for example in found:
                    if media_type != "text/plain":
                        validator(document, media["schema"]).validate(example)


def test_every_operation_documents_server_errors(document: Document) -> None:
    for name, operation in operations(document):
        assert "500" in operation["responses"], name
        if "security" in operation:
            assert {"401", "503"} <= operation["responses"].keys(), name
