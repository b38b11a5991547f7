"""A request limiter for tests that are not about limits: every request goes at once."""

from __future__ import annotations

import uuid

from app.limits.budget import Priority


class Unlimited:
    """Lets every request go at once. It records no `sending` mark: a pending call it let
    through looks never sent (tests of that rule use the fleet limiter)."""

    def __init__(self) -> None:
        self.asked: list[Priority] = []

    async def acquire(self, priority: Priority, *, sending: uuid.UUID | None = None) -> None:
        self.asked.append(priority)
