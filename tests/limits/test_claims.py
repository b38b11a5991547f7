"""Claims on a session: held while the process lives, gone the moment it dies."""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.claims import ClaimKind, ClaimsLost, ClaimTaken, SessionClaims, claim_key, held
from app.db import PROJECT_ROOT

# Holds a claim in its own process, says so, then waits to be killed.
HOLDER = """
import asyncio, sys, uuid
from sqlalchemy.ext.asyncio import create_async_engine
from app.claims import ClaimKind, SessionClaims

async def main() -> None:
    claims = SessionClaims(create_async_engine(sys.argv[1]))
    await claims.start()
    async with claims.holding(ClaimKind.PLACING, uuid.UUID(sys.argv[2])):
        print("holding", flush=True)
        await asyncio.sleep(3600)

asyncio.run(main())
"""


@pytest.fixture
async def claims(engine: AsyncEngine) -> AsyncIterator[SessionClaims]:
    started = SessionClaims(engine)
    await started.start()
    yield started
    await started.close()


async def test_a_claim_is_held_until_released_and_shows_from_any_session(
    engine: AsyncEngine, claims: SessionClaims
) -> None:
    mine, other = uuid.uuid4(), uuid.uuid4()
    rival = SessionClaims(engine)
    await rival.start()
    try:
        async with claims.holding(ClaimKind.PLACING, mine):
            with pytest.raises(ClaimTaken):
                async with rival.holding(ClaimKind.PLACING, mine):
                    pass
            # Another kind of claim on the same call is another lock.
            async with rival.holding(ClaimKind.RECONCILING, mine):
                pass
            assert await claims.still_held(ClaimKind.PLACING, mine)
            async with engine.connect() as connection:
                assert await held(connection, ClaimKind.PLACING, [mine, other]) == {mine}
        async with engine.connect() as connection:
            assert await held(connection, ClaimKind.PLACING, [mine, other]) == set()
        async with rival.holding(ClaimKind.PLACING, mine):
            pass
    finally:
        await rival.close()


async def test_a_killed_process_holds_nothing(database_url: str, engine: AsyncEngine) -> None:
    call_id = uuid.uuid4()
    holder = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        HOLDER,
        database_url,
        str(call_id),
        cwd=PROJECT_ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None
        assert await asyncio.wait_for(holder.stdout.readline(), 60) == b"holding\n"
        async with engine.connect() as connection:
            assert await held(connection, ClaimKind.PLACING, [call_id]) == {call_id}
    finally:
        holder.kill()  # SIGKILL: no cleanup runs in the holder
        await holder.wait()

    async def released() -> bool:
        async with engine.connect() as connection:
            return not await held(connection, ClaimKind.PLACING, [call_id])

    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while not await released():
        assert loop.time() < deadline, "the dead process's claim outlived it by 5 s"
        await asyncio.sleep(0.05)


async def test_claims_on_a_lost_session_say_so(engine: AsyncEngine) -> None:
    claims = SessionClaims(engine)
    await claims.start()
    call_id = uuid.uuid4()

    async def hold_while_the_session_dies() -> None:
        async with claims.holding(ClaimKind.PLACING, call_id):
            async with engine.connect() as admin:
                # The session dies under the process, as when Postgres restarts.
                await admin.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                        " AND query LIKE '%pg_try_advisory_lock%'"
                    )
                )
            await claims.still_held(ClaimKind.PLACING, call_id)

    with pytest.raises(ClaimsLost):
        await hold_while_the_session_dies()
    await claims.close()


def test_keys_spread_over_the_whole_bigint_range() -> None:
    keys = {claim_key(ClaimKind.PLACING, uuid.uuid4()) for _ in range(1000)}
    assert len(keys) == 1000
    assert min(keys) < 0 < max(keys)
