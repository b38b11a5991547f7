"""Fixtures for the API tests beyond the shared ones."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI


@pytest.fixture
async def exotel_side(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """Exotel's side of the status callbacks: no API key, only the URL it was given."""
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://callbridge.test"
    ) as http:
        yield http
