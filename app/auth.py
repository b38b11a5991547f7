"""Bearer API keys from API_KEYS, with roles `write` (place and read) and `read`."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.config import ApiClient, Role
from app.errors import Problem

ANONYMOUS = ApiClient(name="anonymous", role="write")
# Documents the scheme in OpenAPI; `authorize` reads the header and answers (problem+json).
_bearer = HTTPBearer(auto_error=False, description="A key from API_KEYS")


class ApiKeys:
    """Looks clients up by the SHA-256 of their secret, compared in constant time."""

    def __init__(self, clients: dict[str, tuple[ApiClient, str]]) -> None:
        self._by_digest = [
            (hashlib.sha256(secret.encode()).digest(), client)
            for client, secret in clients.values()
        ]

    @property
    def open_access(self) -> bool:
        return not self._by_digest

    def identify(self, secret: str | None) -> ApiClient:
        """The client whose key `secret` is (None: no Bearer key was sent)."""
        if self.open_access:
            return ANONYMOUS
        if not secret:
            raise _unauthorized("Send an API key as `Authorization: Bearer <key>`")
        digest = hashlib.sha256(secret.strip().encode()).digest()
        found = None
        for known, client in self._by_digest:
            if hmac.compare_digest(known, digest):
                found = client
        if found is None:
            raise _unauthorized("Unknown API key")
        return found


def _unauthorized(detail: str) -> Problem:
    return Problem(401, "unauthorized", detail, headers={"WWW-Authenticate": "Bearer"})


def _from_this_machine(request: Request) -> bool:
    """Open access (simulator mode without API_KEYS) is for a developer's own machine."""
    host = request.client.host if request.client else ""
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _bearer_key(authorization: str | None) -> str | None:
    scheme, _, key = (authorization or "").partition(" ")
    return key if scheme.lower() == "bearer" and key else None


def authorize(request: Request, role: Role) -> ApiClient:
    """The API client whose key the request carries, if it may act as `role`; else the
    Problem (401, 403) that refuses the request."""
    keys: ApiKeys = request.app.state.api_keys
    if keys.open_access and not _from_this_machine(request):
        raise Problem(
            403, "forbidden", "Without API_KEYS, only requests from this machine are served"
        )
    client = keys.identify(_bearer_key(request.headers.get("authorization")))
    if role == "write" and client.role != "write":
        raise Problem(403, "forbidden", "This API key may only read calls")
    request.state.api_client = client.name
    return client


def _require(role: Role) -> object:
    # `async def` although it awaits nothing: FastAPI runs a plain `def` dependency in a
    # worker thread, a hand-off on every request for a few microseconds of hashing.
    async def dependency(
        request: Request,
        _: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> ApiClient:
        return authorize(request, role)

    return Depends(dependency)


Reader = Annotated[ApiClient, _require("read")]
Writer = Annotated[ApiClient, _require("write")]
