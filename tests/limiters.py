"""A request limiter for tests that are not about limits: every request goes at once."""

from __future__ import annotations


class Unlimited:
    """Lets every request go at once, and counts them."""

    def __init__(self) -> None:
        self.asked = 0

    async def acquire(self) -> None:
        self.asked += 1
