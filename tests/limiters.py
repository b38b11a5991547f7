"""A request limiter for tests that are not about limits: every request goes at once."""

from __future__ import annotations

from app.limits.budget import Priority


class Unlimited:
    """Lets every request go at once."""

    def __init__(self) -> None:
        self.asked: list[Priority] = []

    async def acquire(self, priority: Priority) -> None:
        self.asked.append(priority)
