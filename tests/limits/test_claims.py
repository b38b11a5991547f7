"""Claims on a session: held while the process lives, gone the moment it dies."""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import structlog
from sqlalchemy import Uuid, func, literal, select, text, union_all
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql.expression import Executable
from structlog.testing import capture_logs

from app.claims import (
    RELEASE_DELAY_S,
    ClaimKind,
    ClaimsLost,
    ClaimTaken,
    SessionClaims,
    claim_key,
    held,
    key_of,
    unheld,
)
from app.db import PROJECT_ROOT

# Holds a claim in its own process, says so, then waits to be killed.
HOLDER = """
import asyncio, sys, uuid
from sqlalchemy.ext.asyncio import create_async_engine
from app.claims import ClaimKind, SessionClaims

async def main() -> None:
    claims = SessionClaims(create_async_engine(sys.argv[1]))
    await claims.start()
    kind = ClaimKind(sys.argv[3]) if len(sys.argv) > 3 else ClaimKind.PLACING
    async with claims.holding(kind, uuid.UUID(sys.argv[2])):
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


async def test_sql_computes_the_same_keys(engine: AsyncEngine) -> None:
    ids = [uuid.uuid4() for _ in range(50)]
    async with engine.connect() as connection:
        for kind in ClaimKind:
            for work_id in ids:
                column = literal(work_id, Uuid)
                found = await connection.scalar(select(key_of(kind, column)))
                assert found == claim_key(kind, work_id)


async def test_claim_first_takes_the_first_unheld_candidate_and_nothing_else(
    engine: AsyncEngine, claims: SessionClaims
) -> None:
    ids = [uuid.uuid4() for _ in range(4)]
    rows = union_all(
        *(
            select(literal(work_id, Uuid).label("id"), literal(n).label("n"))
            for n, work_id in enumerate(ids)
        )
    ).subquery()
    candidates = (
        select(rows.c.id).where(unheld(ClaimKind.RECONCILING, rows.c.id)).order_by(rows.c.n)
    )
    rival = SessionClaims(engine)
    await rival.start()
    try:
        async with rival.holding(ClaimKind.RECONCILING, ids[0]):
            assert await claims.claim_first(ClaimKind.RECONCILING, candidates) == ids[1]
            assert await claims.claim_first(ClaimKind.RECONCILING, candidates) == ids[2]
            async with engine.connect() as connection:
                assert await held(connection, ClaimKind.RECONCILING, ids) == set(ids[:3])
                assert (
                    await connection.scalar(
                        select(func.count()).where(unheld(ClaimKind.RECONCILING, rows.c.id))
                    )
                    == 1
                )
    finally:
        await rival.close()


async def _until(condition: Callable[[], Awaitable[bool]], timeout_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await condition():
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.01)


def _sent(claims: SessionClaims) -> Callable[[], Awaitable[bool]]:
    """Whether nothing queued in the background is left to send."""

    async def sent() -> bool:
        return claims._sending is None

    return sent


def _statements_sent(claims: SessionClaims, monkeypatch: pytest.MonkeyPatch) -> list[Executable]:
    """The statements `claims` sends from now on, as it sends them."""
    sent: list[Executable] = []
    execute = claims._execute

    async def recorded(statement: Executable, **params: object) -> object:
        sent.append(statement)
        return await execute(statement, **params)

    monkeypatch.setattr(claims, "_execute", recorded)
    return sent


async def test_a_background_claim_is_taken_then_released(
    engine: AsyncEngine, claims: SessionClaims
) -> None:
    call_id = uuid.uuid4()
    claim = claims.claim_soon(ClaimKind.PLACING, call_id)
    claim.release()  # before the claim even went out: neither is sent

    async def released() -> bool:
        async with engine.connect() as connection:
            return not await held(connection, ClaimKind.PLACING, [call_id])

    await _until(_sent(claims))
    assert await released()

    holding = claims.claim_soon(ClaimKind.PLACING, call_id)
    await _until(lambda: claims.still_held(ClaimKind.PLACING, call_id))
    holding.release()
    await _until(released)


async def test_background_claims_and_releases_go_together_in_few_statements(
    engine: AsyncEngine, claims: SessionClaims, monkeypatch: pytest.MonkeyPatch
) -> None:
    statements = _statements_sent(claims, monkeypatch)

    async def held_now(ids: list[uuid.UUID]) -> set[uuid.UUID]:
        async with engine.connect() as connection:
            return await held(connection, ClaimKind.PLACING, ids)

    sent = _sent(claims)
    ids = [uuid.uuid4() for _ in range(50)]
    taken = [claims.claim_soon(ClaimKind.PLACING, work_id) for work_id in ids]
    await _until(sent)
    assert await held_now(ids) == set(ids)
    assert len(statements) == 1

    # A release waits for a claim to ride with: the next call's, here.
    for claim in taken[:25]:
        claim.release()
    await asyncio.sleep(RELEASE_DELAY_S / 4)
    later = uuid.uuid4()
    claims.claim_soon(ClaimKind.PLACING, later)
    await _until(sent)
    assert await held_now([*ids, later]) == {*ids[25:], later}
    assert len(statements) == 2

    # With no claim to ride with, releases go on their own, RELEASE_DELAY_S later.
    for claim in taken[25:]:
        claim.release()
    await _until(sent, timeout_s=RELEASE_DELAY_S * 5)
    assert await held_now(ids) == set()
    assert len(statements) == 3


async def test_closing_while_a_release_waits_sends_nothing_more(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ending the session releases every claim: a release still waiting for a claim to
    ride with is dropped, not sent on a closed session (which failed, and said so in a
    warning at every shutdown)."""
    claims = SessionClaims(engine)
    await claims.start()
    statements = _statements_sent(claims, monkeypatch)
    call_id = uuid.uuid4()
    claim = claims.claim_soon(ClaimKind.PLACING, call_id)
    await _until(_sent(claims))
    claim.release()
    await asyncio.sleep(RELEASE_DELAY_S / 4)  # the release now waits for company

    await claims.close()

    assert len(statements) == 1
    async with engine.connect() as connection:
        assert not await held(connection, ClaimKind.PLACING, [call_id])


async def test_background_claims_log_under_no_request(engine: AsyncEngine) -> None:
    """The statement that sends queued claims serves many requests: its warnings carry
    no request id, not that of the request whose claim started it."""
    claims = SessionClaims(engine)
    await claims.start()
    assert claims._connection is not None
    await claims._connection.close()  # the next statement fails, and says so
    structlog.contextvars.bind_contextvars(request_id="the-first-request")
    try:
        with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logged:
            claims.claim_soon(ClaimKind.PLACING, uuid.uuid4())
            await _until(_sent(claims))
    finally:
        structlog.contextvars.unbind_contextvars("request_id")
        await claims.close()

    [failed] = [entry for entry in logged if entry["event"] == "claims_failed"]
    assert "request_id" not in failed


async def test_claims_come_back_after_their_session_was_lost(engine: AsyncEngine) -> None:
    claims = SessionClaims(engine)
    await claims.start()
    try:
        async with engine.connect() as admin:
            await admin.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            )
        with pytest.raises(ClaimsLost):
            await claims.try_claim(ClaimKind.PLACING, uuid.uuid4())
        assert await claims.try_claim(ClaimKind.PLACING, uuid.uuid4())
    finally:
        await claims.close()
