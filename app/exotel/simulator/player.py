"""Status callbacks, delivered the way Exotel delivers them.

Multipart by default, JSON on request; a failure (non-2xx, no answer within 15 s) is
retried twice. Each callback a call owes (state.py's `callback_steps`) goes out when
the simulated clock reaches it; once delivered (or given up) the store remembers it,
so a simulator that takes over a dead one's calls sends only what is still owed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import httpx

from app.exotel.simulator.state import CallbackStep, SimulatedCall
from app.exotel.simulator.store import CallStore
from app.exotel.simulator.wire import json_callback, multipart_callback

logger = logging.getLogger(__name__)

CALLBACK_ATTEMPTS: Final = 3  # Exotel tries once and retries up to twice
CALLBACK_RETRY_PAUSE_S: Final = 1.0  # simulated seconds
CALLBACK_TIMEOUT_S: Final = 15.0  # Exotel's limit for a 2xx, in real seconds


class CallbackPlayer:
    def __init__(
        self,
        store: CallStore,
        *,
        speed: float,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._store = store
        self._speed = speed
        self._client = httpx.AsyncClient(transport=transport, timeout=CALLBACK_TIMEOUT_S)
        self._tasks: set[asyncio.Task[None]] = set()
        self._playing: set[str] = set()  # Sids whose callbacks this process is sending

    async def aclose(self) -> None:
        """Stop every delivery in progress (what is not delivered stays owed)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._client.aclose()

    def start(self, call: SimulatedCall) -> None:
        """Send the call's callbacks in the background, each when it is due."""
        if call.sid not in self._playing:
            self.spawn(self.play(call))

    async def play(self, call: SimulatedCall) -> None:
        self._playing.add(call.sid)
        try:
            steps = [step for step in call.callback_steps() if step.name not in call.delivered]
            for position, step in enumerate(steps):
                wait_s = (call.real_time_of(step.at_s) - datetime.now(UTC)).total_seconds()
                if wait_s > 0:
                    await asyncio.sleep(wait_s)
                payload = call.callback_payload(step)
                for _ in range(step.copies):
                    await self._deliver(call, step, payload)
                await self._store.delivered(
                    call.sid, step.name, still_owed=position < len(steps) - 1
                )
        finally:
            self._playing.discard(call.sid)

    async def _deliver(
        self, call: SimulatedCall, step: CallbackStep, payload: dict[str, Any]
    ) -> None:
        """POST one callback like Exotel: a failure (non-2xx, no answer) is retried twice."""
        assert call.status_callback is not None
        encode = json_callback if call.callback_as_json else multipart_callback
        content, content_type = encode(payload)
        event = step.event_type or "default"
        for attempt in range(1, CALLBACK_ATTEMPTS + 1):
            try:
                response = await self._client.post(
                    call.status_callback, content=content, headers={"Content-Type": content_type}
                )
            except httpx.HTTPError as exc:
                failure = type(exc).__name__
            else:
                if response.is_success:
                    return
                failure = f"HTTP {response.status_code}"
            # The callback URL is not logged: it carries the receiver's secret token.
            logger.warning(
                "%s callback of call %s failed (attempt %d of %d): %s",
                event,
                call.sid,
                attempt,
                CALLBACK_ATTEMPTS,
                failure,
            )
            if attempt < CALLBACK_ATTEMPTS:
                await asyncio.sleep(CALLBACK_RETRY_PAUSE_S / self._speed)

    async def take_over(self, resume_after: timedelta, every_s: float) -> None:
        """Deliver, forever, what calls of a gone process still owe (a shared store only)."""
        while True:
            try:
                owed = await self._store.claim_owed(datetime.now(UTC) - resume_after, resume_after)
            except Exception:
                logger.exception("looking for owed callbacks failed")
                owed = []
            for call in owed:
                logger.info("delivering the callbacks call %s still owes", call.sid)
                self.start(call)
            await asyncio.sleep(every_s)

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            logger.error("simulated call work failed", exc_info=error)
