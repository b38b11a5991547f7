"""An Exotel stand-in: the v1 "connect two numbers" API as Callbridge uses it.

Exotel has no sandbox, so this ASGI app plays that part in development and tests. It
answers the connect, call-details, bulk call-details and recording APIs in Exotel's
shapes, plays every call forward in compressed simulated time
(`SimulatorConfig.speed` simulated seconds per real second) and posts status
callbacks the way Exotel does: multipart by default, JSON on request, retried twice.

Run it standalone with `callbridge simulate` (or `python -m app.exotel.simulator`;
`serve_simulator` does the same from code), or mount `Simulator(...).app` under a
prefix (then call `start()` and `aclose()` yourself: a mounted app gets no lifespan
events). Given a database (`database=` an engine or URL), it keeps its calls in its
own tables (`sim_calls`), so a restarted simulator still knows them and delivers the
callbacks they still owe; without one, it keeps them in memory.

Test numbers: the last four digits of `To` choose what happens (scenarios.py).

| To ends in | What happens |
|---|---|
| 9901 | busy: To leg busy; From leg completed with its on-call time; ConversationDuration 0 |
| 9902 | no-answer: To rings out (TimeOut) unanswered |
| 9903 | failed: To leg fails |
| 9904 | From never answers: no-answer; Legs[0] no-answer; Legs[1] never attempted (empty) |
| 9905 | DND: 403 "Call to [0XXXXXXXXXX] cannot be made because of TRAI NDNC ...", no Code |
| 9906 | rate limited: 429, `Retry-After: 30`, Code "RATE_LIMIT_EXCEEDED"; no call |
| 9907 | Exotel down: 500 "Service Unavailable; ", Code 35008; no call |
| 9908 | slow answer: the connect answer comes after `slow_answer_s` real seconds |
| 9909 | lost answer: placed; the answer (and the `answered` event) lost; talk outlasts the drop |
| 9910 | duplicated callback: the terminal callback is delivered 3 times |
| 9911 | callback first: the call ends at once; its callback is delivered before the answer |
| 9912 | stale answered: an `answered` callback (in-progress) follows the terminal one |
| 9913 | no callback: the call completes, but no callback is ever sent |
| 9914 | KYC: 403 "Account is not KYC compliant"; no call |
| 9915 | auth failure: 401 as if the credentials were wrong; no call |
| 9916 | lost answer on a long call: as 9909, and people talk until TimeLimit (4 hours when unset) |
| other | completes normally: From rings 3-6 s, To rings 3-8 s, talk 20-60 s |

How it behaves like the live API (see the facts file, "What the live API does"):
- `connect.json` answers JSON, `connect` XML (`<TwilioResponse>`); errors likewise.
- Numbers are echoed in national form (`09876543210`).
- Callbacks: only subscribed events (`answered` only with `StatusCallbackEvents[n]=answered`);
  leg 0 `AnsweredBy` is `NA`, the To leg's `HUMAN`, and only for a leg that answered.
- Call details: `Duration`, `Price` and `EndTime` appear `figures_delay_s` simulated
  seconds after the end; `Details.Legs` carries each leg's `OnCallDuration`.
- Bulk details never list ongoing calls; `DateCreated` windows at most a month wide,
  six months back, the last 31 days by default; paging in the shape `paging` names.
- At most `requests_per_minute` (200) API requests per account in any 60 s, else 429
  `Rate limit exceeded. Try again in 30 seconds.` with `Retry-After: 30`. The window is
  this process's: simulators sharing a database count separately.
- 401 `Authentication failed. Check your API key and token.` without a Code.
- `Record=true` records answered calls: the RecordingUrl serves a small WAV, with
  `Range`, to the account's credentials only.
- `Price` is 0.750 per started minute of each leg's on-call time, as a string.
- Every connect request, refused ones included, is kept (in this process) for tests:
  see `Simulator.connect_requests` and `GET`/`DELETE /_sim/requests`, which need the
  simulator's credentials like its Exotel routes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import timedelta

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette

from app.exotel.simulator.config import Paging, SimulatorConfig
from app.exotel.simulator.player import CallbackPlayer
from app.exotel.simulator.routes import ExotelRoutes
from app.exotel.simulator.scenarios import Scenario, scenario_for
from app.exotel.simulator.store import CallStore, MemoryStore, PostgresStore

__all__ = [
    "Paging",
    "Scenario",
    "Simulator",
    "SimulatorConfig",
    "scenario_for",
    "serve_simulator",
]

logger = logging.getLogger(__name__)


class Simulator:
    """Exotel's call APIs over a store of simulated calls."""

    def __init__(
        self,
        config: SimulatorConfig | None = None,
        *,
        callback_transport: httpx.AsyncBaseTransport | None = None,
        database: AsyncEngine | str | None = None,
    ) -> None:
        self.config = config = config or SimulatorConfig()
        self.connect_requests: list[dict[str, str]] = []
        self._shared = database is not None
        self._store: CallStore = PostgresStore(database) if database is not None else MemoryStore()
        self._player = CallbackPlayer(self._store, speed=config.speed, transport=callback_transport)
        self._starting = asyncio.Lock()
        self._started = False
        routes = ExotelRoutes(config, self._store, self._player, self.connect_requests, self.start)
        self.app = Starlette(routes=routes.routes, lifespan=self._lifespan)

    async def start(self) -> None:
        """Open the store (creating its tables) and take over callbacks still owed by
        calls of a simulator that is gone. Idempotent; the routes call it too."""
        if self._started:
            return
        async with self._starting:
            if self._started:
                return
            await self._store.open()
            if self._shared:
                resume_after = timedelta(seconds=self.config.resume_after_s)
                every_s = max(min(self.config.resume_after_s / 4, 30.0), 0.05)
                self._player.spawn(self._player.take_over(resume_after, every_s))
            self._started = True

    async def aclose(self) -> None:
        """Stop every callback delivery; the calls themselves live on in a shared store."""
        await self._player.aclose()
        await self._store.close()

    @contextlib.asynccontextmanager
    async def _lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        await self.start()
        yield
        await self.aclose()


def serve_simulator(*, host: str, port: int, speed: float, database_url: str | None = None) -> None:
    """Serve a simulator with the default credentials until interrupted; with
    `database_url` its calls outlive it."""
    import uvicorn

    logging.basicConfig(level=logging.INFO)
    # httpx logs every callback URL at INFO, and those carry the receiver's token.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    simulator = Simulator(SimulatorConfig(speed=speed), database=database_url)
    uvicorn.run(simulator.app, host=host, port=port)
