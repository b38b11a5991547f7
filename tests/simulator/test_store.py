"""Given a database, the simulator keeps its calls in its own tables: they outlive a
restart, replicas share them, and a successor delivers the callbacks still owed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack

import httpx
import psycopg
import pytest
from alembic import command
from alembic.config import Config

from app.db import PROJECT_ROOT
from app.exotel.simulator import Simulator, SimulatorConfig
from tests.simulator.conftest import (
    CALLS,
    CREDENTIALS,
    CallbackReceiver,
    callback_fields,
    connect,
    details,
    wait_until_ended,
)

FAST = SimulatorConfig(speed=1000.0, figures_delay_s=5, resume_after_s=0.1)
# Calls of 0.3 to 0.75 s: long enough to stop a simulator before they end.
SLOWER = SimulatorConfig(speed=100.0, figures_delay_s=5, resume_after_s=0.1)


@pytest.fixture(autouse=True)
def _drop_simulator_tables(database_url: str) -> Iterator[None]:
    yield
    with psycopg.connect(database_url.replace("+psycopg", "")) as conn:
        conn.execute("DROP TABLE IF EXISTS sim_calls")


class Simulators:
    """Simulators on one database, each with its own callback receiver."""

    def __init__(self, database_url: str, stack: AsyncExitStack) -> None:
        self._database_url = database_url
        self._stack = stack

    async def start(
        self, config: SimulatorConfig, receiver: CallbackReceiver
    ) -> tuple[Simulator, httpx.AsyncClient]:
        simulator = Simulator(
            config,
            callback_transport=httpx.MockTransport(receiver.handle),
            database=self._database_url,
        )
        await simulator.start()
        self._stack.push_async_callback(simulator.aclose)
        client = await self._stack.enter_async_context(
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=simulator.app),
                base_url="http://sim",
                auth=CREDENTIALS,
            )
        )
        return simulator, client


@pytest.fixture
async def simulators(database_url: str) -> AsyncIterator[Simulators]:
    async with AsyncExitStack() as stack:
        yield Simulators(database_url, stack)


async def test_calls_outlive_a_restart(simulators: Simulators) -> None:
    first, first_http = await simulators.start(FAST, CallbackReceiver())
    sid = await connect(first_http, Record="true")
    before = await wait_until_ended(first_http, sid)
    await first.aclose()

    _, second_http = await simulators.start(FAST, CallbackReceiver())

    assert await details(second_http, sid) == before
    listing = await second_http.get(f"{CALLS}.json", params={"Sid": sid})
    assert [call["Sid"] for call in listing.json()["Calls"]] == [sid]


async def test_replicas_on_one_database_know_each_others_calls(simulators: Simulators) -> None:
    receiver = CallbackReceiver()
    _, one = await simulators.start(FAST, receiver)
    _, other = await simulators.start(FAST, CallbackReceiver())

    sid = await connect(one)
    await receiver.wait_for(1)

    assert (await details(other, sid))["Status"] == "completed"


async def test_a_successor_delivers_the_callbacks_a_stopped_simulator_still_owed(
    simulators: Simulators,
) -> None:
    stopped, stopped_http = await simulators.start(SLOWER, CallbackReceiver())
    sid = await connect(stopped_http, StatusCallbackContentType="application/json")
    await stopped.aclose()  # before the call ends: its terminal callback is owed

    successor_receiver = CallbackReceiver()
    await simulators.start(SLOWER, successor_receiver)
    [request] = await successor_receiver.wait_for(1, timeout_s=10)
    await asyncio.sleep(0.3)  # and only once

    fields = await callback_fields(request)
    assert (fields["CallSid"], fields["EventType"], fields["Status"]) == (
        sid,
        "terminal",
        "completed",
    )
    assert len(successor_receiver.requests) == 1


async def test_a_delivered_callback_is_not_sent_again(simulators: Simulators) -> None:
    receiver = CallbackReceiver()
    first, first_http = await simulators.start(FAST, receiver)
    await connect(first_http)
    await receiver.wait_for(1)
    await asyncio.sleep(0.05)  # the delivery is recorded after the POST
    await first.aclose()

    successor_receiver = CallbackReceiver()
    await simulators.start(FAST, successor_receiver)
    await asyncio.sleep(0.5)

    assert successor_receiver.requests == []


async def test_the_simulators_tables_are_not_callbridges_migrations_business(
    simulators: Simulators, database_url: str
) -> None:
    await simulators.start(FAST, CallbackReceiver())  # creates sim_calls
    config = Config(str(PROJECT_ROOT / "alembic.ini"))
    config.attributes["database_url"] = database_url

    # Raises if autogenerate would drop sim_calls. (Alembic runs its own event loop.)
    await asyncio.to_thread(command.check, config)
