"""How a call is placed, stored and read back.

Placing follows one rule above all: a phone call is never placed twice for one
logical request. The call row (status `pending`) is committed before Exotel is
asked, and Exotel's answer is committed after; no transaction is held open while
waiting on Exotel. A request whose answer was lost leaves the call `unknown`, for
the reconciler to settle.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import functools
import hashlib
import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import phonenumbers
import psycopg
import structlog
from psycopg.types.json import Jsonb
from sqlalchemy import String, and_, select
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect, Row
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from starlette.responses import StreamingResponse

from app.callbacks.applier import WAITING, apply_waiting
from app.calls import store
from app.calls.apply import apply_update, is_terminal
from app.calls.recording import stream_recording
from app.calls.schemas import CallCreate, CallOut
from app.calls.state import APPLIED_COLUMNS, CallState, LegState
from app.calls.store import call_events, calls
from app.calls.tokens import CallbackTokens
from app.claims import BackgroundClaim, ClaimKind, SessionClaims
from app.config import ApiClient
from app.db import ConnectionPool
from app.errors import DATABASE_DOWN_ERRORS, Problem, validation_problem
from app.exotel.client import (
    ConnectRequest,
    ExotelAuthFailed,
    ExotelClient,
    ExotelError,
    ExotelOutcomeUnknown,
    ExotelRateLimited,
    ExotelRefused,
)
from app.exotel.schemas import ExotelCall
from app.limits.gcra import ClientLimiter, FleetLimiter, Reservation, reserving, wait_s
from app.metrics import RATE_LIMITED, record_status_change
from app.ratelimit import rate_limited

log = structlog.get_logger(__name__)

# How long an unanswered connect request stays `unknown` before the reconciler looks.
UNKNOWN_GRACE = timedelta(seconds=30)
# A call being placed is claimed by its process (app/claims.py) from before its row is
# committed until Exotel's answer is recorded. The claim is taken in the background,
# not waited for, so a pending call is left alone for this long: enough for the claim
# to land. Past it, a pending call that no live process claims was left by a dead one,
# and the reconciler settles it at once (app/jobs/reconciler.py).
CLAIM_GRACE = timedelta(seconds=5)
# When the database fails just as Exotel's answer is to be stored, the answer is kept and
# storing it retried in the background: POST /calls waits this long for it (then answers
# 504 with the call's id, never "503, retry", as the phone may be ringing), and retrying
# goes on this long. Should it never succeed, the row stays `pending` and the reconciler
# takes it up once this process no longer claims it (CLAIM_GRACE).
STORE_ANSWER_WAIT_S = 3.0
STORE_ANSWER_RETRY_S = 60.0
STORE_ANSWER_BACKOFF_S = (0.1, 0.25, 0.5, 1.0, 2.0)
# At shutdown, how long in-flight retries may go on before they are given up.
STORE_ANSWER_SHUTDOWN_S = 5.0
# Our snake_case option values, as Exotel spells them.
EXOTEL_VALUES = {
    "callee": "Callee",
    "both": "Both",
    "leg1_connect": "Leg1Connect",
    "leg2_connect": "Leg2Connect",
}


@dataclass(frozen=True)
class Answer:
    """What POST /calls answers: status, JSON body and headers."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class CallFilters:
    status: str | None = None
    from_number: str | None = None
    to_number: str | None = None
    custom_field: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None


def mask_number(number: str | None) -> str | None:
    """`+919876543210` -> `+91******3210`: enough to correlate, not enough to dial."""
    if not number:
        return number
    return number[:3] + "*" * max(len(number) - 7, 0) + number[-4:]


# Parsing and checking a number is most of the CPU of validating a request, and the same
# numbers recur (an agent's, the caller id): each is done once per process.
@functools.lru_cache(maxsize=4096)
def to_e164(number: str, default_country: str) -> str | None:
    try:
        parsed = phonenumbers.parse(number, default_country)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(parsed):
        return None
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def call_location(call: CallState) -> str:
    return f"/calls/{call.sid or call.id}"


def encode_cursor(created_at: str, call_id: str) -> str:
    """The cursor of the page after the call created at `created_at` (ISO 8601)."""
    raw = json.dumps([created_at, call_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, call_id = json.loads(raw)
        return datetime.fromisoformat(created_at), uuid.UUID(call_id)
    except (ValueError, TypeError) as exc:
        raise validation_problem(
            [{"field": "cursor", "message": "Not a cursor this service gave out"}]
        ) from exc


# What a stored call answers an Idempotency-Key replay with, besides its state.
_REPLAY_COLUMNS = (calls.c.request_fingerprint, calls.c.response_status, calls.c.response_body)


# The columns a new call's row is inserted with (NewCall.values), its legs beside it.
_NEW_CALL_COLUMNS = (
    "id",
    "status",
    "from_number",
    "to_number",
    "caller_id",
    "api_client",
    "idempotency_key",
    "request_fingerprint",
    "created_at",
    "updated_at",
    "next_reconcile_at",
    *(name for name in CallCreate.model_fields if name not in ("from_", "to", "caller_id")),
)
_POSTGRES: Dialect = postgresql.dialect()  # type: ignore[no-untyped-call]


def _typed_parameter(name: str) -> str:
    """The parameter `name` cast to its column's type: in INSERT ... SELECT, Postgres
    takes an untyped parameter (a NULL, a str) as text. Strings stay text, so that one
    too long still fails, as in INSERT ... VALUES, rather than being cut by the cast."""
    column_type = calls.c[name].type
    sql_type = "text" if isinstance(column_type, String) else column_type.compile(_POSTGRES)
    return f"CAST(%({name})s AS {sql_type})"


# The client's place (app/limits/gcra.py), then, if it was granted, the connect request's
# place under the Exotel limit and the pending call with its legs: one statement,
# committed before Exotel is asked. The call is marked as possibly sent from now on
# (connect_reserved_at) if and only if its place was granted, so that another process
# finding it pending and unclaimed knows whether it may fail it as never sent
# (app/jobs/reconciler.py). A request whose key is taken (a replay) takes no Exotel place.
_EXOTEL_PLACE = reserving(
    "exotel",
    "EXISTS (SELECT FROM client) AND NOT EXISTS (SELECT FROM calls"
    " WHERE api_client = %(api_client)s AND idempotency_key = %(idempotency_key)s)",
)
_INSERT_CALL = f"""
    WITH client AS ({reserving("client")}
    ), exotel AS ({_EXOTEL_PLACE}
    ), inserted AS (
        INSERT INTO calls ({", ".join(_NEW_CALL_COLUMNS)}, connect_reserved_at)
        SELECT {", ".join(map(_typed_parameter, _NEW_CALL_COLUMNS))},
               CASE WHEN EXISTS (SELECT FROM exotel) THEN clock_timestamp() END
        WHERE EXISTS (SELECT FROM client)
        ON CONFLICT (api_client, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
        RETURNING id
    ), legs AS (
        INSERT INTO call_legs (call_id, leg, number)
        SELECT id, 0, %(leg_0)s FROM inserted UNION ALL SELECT id, 1, %(leg_1)s FROM inserted
    )
    SELECT EXISTS (SELECT FROM client), {wait_s("client")}, EXISTS (SELECT FROM inserted),
           EXISTS (SELECT FROM exotel), {wait_s("exotel")}
"""  # noqa: S608 - built from our column names only


@dataclass(frozen=True)
class NewCall:
    """A validated request: the row to insert and the pending call it makes."""

    values: dict[str, Any]
    state: CallState


class CallService:
    def __init__(
        self,
        engine: AsyncEngine,
        pool: ConnectionPool,
        exotel: ExotelClient,
        tokens: CallbackTokens,
        claims: SessionClaims,
        client_limiter: ClientLimiter,
        exotel_limiter: FleetLimiter,
        *,
        public_base_url: str,
        default_caller_id: str | None,
        default_country: str,
        reconcile_after: timedelta,
        details_after: timedelta,
    ) -> None:
        self._engine = engine
        # Single statements need no BEGIN/COMMIT of their own.
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
        self._pool = pool
        self._exotel = exotel
        self._tokens = tokens
        self._claims = claims
        self._client_limiter = client_limiter
        self._exotel_limiter = exotel_limiter
        self._public_base_url = public_base_url
        self._default_caller_id = default_caller_id
        self._default_country = default_country
        self._reconcile_after = reconcile_after
        self._details_after = details_after
        # Exotel answers still being stored after their request was answered.
        self._storing: set[asyncio.Task[Answer]] = set()

    async def finish_storing(self) -> None:
        """At shutdown: give answers still being stored a last moment, then give them up."""
        if not self._storing:
            return
        _, unfinished = await asyncio.wait(self._storing, timeout=STORE_ANSWER_SHUTDOWN_S)
        for task in unfinished:
            task.cancel()
        await asyncio.gather(*unfinished, return_exceptions=True)

    # -- placing -------------------------------------------------------------------

    async def place(
        self, client: ApiClient, request: CallCreate, idempotency_key: str | None
    ) -> tuple[Answer, bool]:
        """Place the call; the boolean says whether the answer is an idempotent replay."""
        new = self._new_call(client, request, idempotency_key)
        # Claimed on this process's claims session, in the background: the claim's round
        # trip runs beside the insert's, so placing waits for no extra round trip. Safety
        # does not rest on the claim (a process that finds the call unclaimed may fail it
        # only if it was stored without a place to be sent: see `_INSERT_CALL`); the
        # claim only tells live work from a dead process's, so that the latter is
        # settled within seconds.
        claim = self._claims.claim_soon(ClaimKind.PLACING, new.state.id)
        asking = False
        try:
            async with self._pool.connection() as conn:
                place = await self._insert(conn, client, new)
            if place is None:
                # Another request with the same key got there first.
                assert idempotency_key is not None
                async with self._autocommit.connect() as replaying:
                    return await self._replay(replaying, client, idempotency_key, new), True
            asking = True
            # Shielded: a client that hangs up must not stop us recording Exotel's answer.
            return await asyncio.shield(self._ask_exotel_claimed(new, place, claim)), False
        finally:
            if not asking:
                # Nothing will be sent: unclaimed, the call is failed by the reconciler.
                claim.release()

    async def _ask_exotel_claimed(
        self, new: NewCall, place: Reservation, claim: BackgroundClaim
    ) -> Answer:
        try:
            return await self._ask_exotel(new, place)
        finally:
            claim.release()

    def _new_call(self, client: ApiClient, request: CallCreate, key: str | None) -> NewCall:
        errors = []
        numbers: dict[str, str] = {}
        caller_id = request.caller_id or self._default_caller_id
        if caller_id is None:
            errors.append({"field": "caller_id", "message": "Required: no EXOTEL_CALLER_ID is set"})
        for name, value in (("from", request.from_), ("to", request.to), ("caller_id", caller_id)):
            if value is None:
                continue
            normalised = to_e164(value, self._default_country)
            if normalised is None:
                errors.append({"field": name, "message": "Not a valid phone number"})
            else:
                numbers[name] = normalised
        if errors:
            raise validation_problem(errors)

        options = request.model_dump(exclude={"from_", "to", "caller_id"}, mode="json")
        fingerprint_source = {**options, **numbers}
        fingerprint = hashlib.sha256(
            json.dumps(fingerprint_source, sort_keys=True).encode()
        ).hexdigest()
        now = datetime.now(UTC)
        state = CallState(
            id=uuid.uuid4(),
            sid=None,
            status="pending",
            from_number=numbers["from"],
            to_number=numbers["to"],
            caller_id=numbers["caller_id"],
            created_at=now,
            updated_at=now,
            custom_field=request.custom_field,
            notify_url=options["notify_url"],
            legs=[LegState(0, numbers["from"]), LegState(1, numbers["to"])],
        )
        values = {
            **options,
            "id": state.id,
            "status": state.status,
            "from_number": state.from_number,
            "to_number": state.to_number,
            "caller_id": state.caller_id,
            "api_client": client.name,
            "idempotency_key": key,
            "request_fingerprint": fingerprint,
            "created_at": now,
            "updated_at": now,
            "next_reconcile_at": now + CLAIM_GRACE,
        }
        return NewCall(values, state)

    async def _insert(
        self, conn: psycopg.AsyncConnection[Any], client: ApiClient, new: NewCall
    ) -> Reservation | None:
        """Take the client's place and commit the pending call and its legs, with its
        connect request's place (1 round trip): that place, None if the key is taken, 429
        if the client has no place."""
        legs = {f"leg_{leg.leg}": leg.number for leg in new.state.legs}
        params = {
            **new.values,
            **legs,
            **self._client_limiter.params(client.name),
            **self._exotel_limiter.placing_params(),
        }
        row = await (await conn.execute(_INSERT_CALL, params)).fetchone()
        assert row is not None
        client_granted, client_wait_s, inserted, exotel_granted, exotel_wait_s = row
        limiter = self._client_limiter
        client_place = limiter.reservation(client_granted, client_wait_s)
        if not client_place.granted:
            RATE_LIMITED.labels(client.name).inc()
            raise rate_limited(limiter.per_minute, limiter.retry_after_s(client_place))
        if not inserted:
            return None
        return self._exotel_limiter.reservation(exotel_granted, exotel_wait_s)

    async def _replay(
        self, conn: AsyncConnection, client: ApiClient, key: str, new: NewCall
    ) -> Answer:
        query = store.call_query().add_columns(*_REPLAY_COLUMNS)
        where = and_(calls.c.api_client == client.name, calls.c.idempotency_key == key)
        row = (await conn.execute(query.where(where))).one()
        if row.request_fingerprint != new.values["request_fingerprint"]:
            raise Problem(
                422,
                "idempotency-key-reused",
                "This Idempotency-Key was used with another request body",
            )
        call = store.state_from_row(row)
        if row.response_status is not None and row.response_body is not None:
            headers = {"Location": call_location(call)} if row.response_status == 201 else {}
            return Answer(row.response_status, row.response_body, headers)
        if call.status == "pending":
            raise Problem(
                409,
                "request-in-progress",
                "A request with this Idempotency-Key is still being processed; retry shortly",
                headers={"Retry-After": "1"},
            )
        return self._current_answer(call)

    def _current_answer(self, call: CallState) -> Answer:
        """The answer for a call whose request got no answer of its own from Exotel."""
        if call.sid is not None:
            return Answer(201, self.resource(call), {"Location": call_location(call)})
        return self._unknown_answer(call)

    async def _ask_exotel(self, new: NewCall, place: Reservation) -> Answer:
        values = new.values
        request = ConnectRequest(
            from_number=values["from_number"],
            to_number=values["to_number"],
            caller_id=values["caller_id"],
            status_callback=self.status_callback_url(new.state.id),
            call_type=values["call_type"],
            time_limit=values["time_limit"],
            time_out=values["time_out"],
            wait_url=values["wait_url"],
            record=values["record"],
            recording_channels=values["recording_channels"],
            recording_format=values["recording_format"],
            custom_field=values["custom_field"],
            start_playback_to=EXOTEL_VALUES.get(values["start_playback_to"] or ""),
            start_playback_value=values["start_playback_value"],
            stream_url=values["stream_url"],
            stream_begin=EXOTEL_VALUES.get(values["stream_begin"] or ""),
        )
        pending = new.state
        try:
            exotel_call = await self._exotel.connect(request, self._exotel_limiter.placing(place))
        except ExotelError as exc:
            if isinstance(exc, ExotelOutcomeUnknown):
                if_not_stored = self._unknown_answer(pending)
            else:
                # Not placed, whatever the database says: the answer stands; the row,
                # if it stays `pending`, is settled by the reconciler.
                if_not_stored = self._failure_answer(pending, exc)
            return await self._store_answer(
                pending, functools.partial(self._record_failure, pending, exc), if_not_stored
            )
        answer = await self._store_answer(
            pending,
            functools.partial(self._record_placed, pending, exotel_call),
            self._unknown_answer(pending, stored=False),
        )
        log.info(
            "call_placed",
            call_id=str(pending.id),
            sid=exotel_call.sid,
            from_number=mask_number(pending.from_number),
            to_number=mask_number(pending.to_number),
        )
        return answer

    async def _store_answer(
        self, pending: CallState, store: Callable[[], Awaitable[Answer]], if_not_stored: Answer
    ) -> Answer:
        """Store Exotel's answer; if the database fails, keep retrying in the background.

        Answers what `store` answers if it succeeds within STORE_ANSWER_WAIT_S, else
        `if_not_stored`. Only the database being away is retried: anything else is a bug,
        and raised.
        """
        try:
            return await store()
        except DATABASE_DOWN_ERRORS as exc:
            log.warning("call_answer_not_stored", call_id=str(pending.id), error=type(exc).__name__)
        retrying = asyncio.create_task(self._retry_storing(pending, store))
        self._storing.add(retrying)
        retrying.add_done_callback(self._storing.discard)
        try:
            return await asyncio.wait_for(asyncio.shield(retrying), STORE_ANSWER_WAIT_S)
        except (TimeoutError, *DATABASE_DOWN_ERRORS):
            return if_not_stored

    @staticmethod
    async def _retry_storing(pending: CallState, store: Callable[[], Awaitable[Answer]]) -> Answer:
        call_id = str(pending.id)
        deadline = asyncio.get_running_loop().time() + STORE_ANSWER_RETRY_S
        attempt = 0
        while True:
            pause_s = STORE_ANSWER_BACKOFF_S[min(attempt, len(STORE_ANSWER_BACKOFF_S) - 1)]
            attempt += 1
            await asyncio.sleep(pause_s)
            try:
                answer = await store()
            except DATABASE_DOWN_ERRORS as exc:
                if asyncio.get_running_loop().time() + pause_s >= deadline:
                    # The row stays `pending`: the reconciler will find the call at Exotel.
                    log.error("call_answer_lost", call_id=call_id, error=type(exc).__name__)
                    raise
                continue
            log.info("call_answer_stored", call_id=call_id, attempts=attempt + 1)
            return answer

    async def _record_placed(self, pending: CallState, exotel_call: ExotelCall) -> Answer:
        """Apply Exotel's answer and keep the answer for replays: 1 round trip, normally.

        The pending call is still in memory; unless a callback or the reconciler changed
        the row meanwhile (then the row is locked, read and applied as usual), the
        outcome is computed here and written with one conditional UPDATE.
        """
        update = exotel_call.to_update()
        call = dataclasses.replace(pending, legs=list(pending.legs))
        applied = apply_update(call, update)
        if not update.legs and not applied.became_terminal:
            call.updated_at = datetime.now(UTC)
            answer = Answer(201, self.resource(call), {"Location": call_location(call)})
            written = await self._write_if_untouched(
                pending,
                {
                    **{name: getattr(call, name) for name in APPLIED_COLUMNS},
                    "updated_at": call.updated_at,
                    "next_reconcile_at": call.created_at + self._reconcile_after,
                    "response_status": answer.status,
                    "response_body": answer.body,
                },
                # Callbacks stored before this answer came are applied first (below).
                unless_callbacks_wait=True,
            )
            if written:
                record_status_change(pending.status, call.status)
                return answer
        async with self._engine.begin() as conn:
            # Callbacks stored before this answer came (Exotel may call back first) are
            # applied first, in order, so that the answer tells what they said.
            await apply_waiting(
                conn,
                WAITING & (call_events.c.call_id == pending.id),
                details_after=self._details_after,
            )
            [call] = (await store.lock(conn, [pending.id])).values()
            applied = apply_update(call, update)
            await store.save_applied(conn, [(call, applied)], details_after=self._details_after)
            answer = Answer(201, self.resource(call), {"Location": call_location(call)})
            values: dict[str, Any] = {
                "response_status": answer.status,
                "response_body": answer.body,
            }
            if not is_terminal(call.status):
                values["next_reconcile_at"] = call.created_at + self._reconcile_after
            await conn.execute(calls.update().where(calls.c.id == call.id).values(values))
        return answer

    async def _write_if_untouched(
        self, pending: CallState, values: dict[str, Any], *, unless_callbacks_wait: bool
    ) -> bool:
        """Write `values` if the row is still as `pending` says (1 round trip); with
        `unless_callbacks_wait`, only if no callback for the call waits to be applied."""
        if "response_body" in values:
            values = {**values, "response_body": Jsonb(values["response_body"])}
        assignments = ", ".join(f"{name} = %({name})s" for name in values)
        no_callback_waits = (
            "AND NOT EXISTS (SELECT FROM call_events"
            " WHERE call_id = %(pending_id)s AND processed_at IS NULL)"
            if unless_callbacks_wait
            else ""
        )
        statement = f"""
            UPDATE calls SET {assignments}
            WHERE id = %(pending_id)s AND status = 'pending' AND sid IS NULL
              AND updated_at = %(pending_updated_at)s {no_callback_waits}
            RETURNING id
        """  # noqa: S608 - the names are our columns, never a client's
        params = {**values, "pending_id": pending.id, "pending_updated_at": pending.updated_at}
        async with self._pool.connection() as conn:
            written = await (await conn.execute(statement, params)).fetchone()
        return written is not None

    async def _record_failure(self, pending: CallState, exc: ExotelError) -> Answer:
        call = dataclasses.replace(
            pending,
            error_status=exc.status,
            error_code=None if exc.code is None else str(exc.code),
            error_message=exc.message,
            updated_at=datetime.now(UTC),
        )
        values: dict[str, Any] = {
            "error_status": call.error_status,
            "error_code": call.error_code,
            "error_message": call.error_message,
            "updated_at": call.updated_at,
        }
        if isinstance(exc, ExotelOutcomeUnknown):
            call.status = "unknown"
            answer = self._unknown_answer(call)
            values |= {"status": "unknown", "next_reconcile_at": call.updated_at + UNKNOWN_GRACE}
            log.warning("call_outcome_unknown", call_id=str(call.id), reason=exc.message)
        else:
            call.status = "failed"
            answer = self._failure_answer(call, exc)
            values |= {"status": "failed", "next_reconcile_at": None}
            if isinstance(exc, ExotelRefused):
                # A refusal is final: replay it. Anything else may succeed if retried
                # later, so the key is released for that retry.
                values |= {"response_status": answer.status, "response_body": answer.body}
            else:
                values["idempotency_key"] = None
            log.warning(
                "call_not_placed",
                call_id=str(call.id),
                exotel_status=exc.status,
                reason=exc.message,
            )
        # A callback stored meanwhile is applied over this one by the applier.
        if await self._write_if_untouched(pending, values, unless_callbacks_wait=False):
            record_status_change(pending.status, call.status)
            return answer
        # Settled while we waited: a callback naming this call got here first, or the
        # reconciler stopped waiting for us. What they found stands.
        return self._current_answer(await self._read(pending.id))

    def _failure_answer(self, call: CallState, exc: ExotelError) -> Answer:
        extra = {"id": str(call.id), "exotel_code": call.error_code}
        if isinstance(exc, ExotelRefused):
            problem = Problem(422, "exotel-refused", exc.message, extra=extra)
        elif isinstance(exc, ExotelRateLimited):
            problem = Problem(
                503,
                "exotel-rate-limited",
                "Exotel is rate limiting calls; retry later",
                headers={"Retry-After": str(exc.retry_after_s)},
                extra=extra,
            )
        elif isinstance(exc, ExotelAuthFailed):
            problem = Problem(
                502, "exotel-auth-failed", "Exotel rejected Callbridge's credentials", extra=extra
            )
        else:
            problem = Problem(502, "exotel-unavailable", exc.message, extra=extra)
        return Answer(problem.status, problem.body(), problem.headers)

    def _unknown_answer(self, call: CallState, *, stored: bool = True) -> Answer:
        why = (
            "Exotel did not answer in time; the call may or may not have been placed."
            if stored
            else "Exotel answered, but its answer could not be stored yet (the database is "
            "unavailable); the call may have been placed."
        )
        problem = Problem(
            504,
            "exotel-outcome-unknown",
            f"{why} Do not retry with a new key: read the call by its id until it is settled.",
            extra={"id": str(call.id), "call_status": call.status},
        )
        return Answer(problem.status, problem.body(), {"Location": call_location(call)})

    def status_callback_url(self, call_id: uuid.UUID) -> str:
        return f"{self._public_base_url}/callbacks/exotel?token={self._tokens.for_call(call_id)}"

    # -- reading --------------------------------------------------------------------

    @staticmethod
    def resource(call: CallState) -> dict[str, Any]:
        return CallOut.from_state(call).model_dump(mode="json", by_alias=True)

    async def _read(self, call_id: uuid.UUID) -> CallState:
        async with self._autocommit.connect() as conn:
            call = await store.read(conn, call_id)
        assert call is not None
        return call

    async def get(self, ref: str) -> CallState:
        """A call by its Exotel Sid or its id (1 round trip)."""
        async with self._autocommit.connect() as conn:
            call = await store.read_by_ref(conn, ref)
        if call is None:
            raise _not_found(ref)
        return call

    async def get_resource(self, ref: str) -> str:
        """The call resource as JSON, by the call's Exotel Sid or its id (1 round trip)."""
        async with self._pool.connection() as conn:
            resource = await store.read_resource(conn, ref)
        if resource is None:
            raise _not_found(ref)
        return resource

    async def recording(self, ref: str, range_header: str | None) -> StreamingResponse:
        """The call's recording, streamed from Exotel (app/calls/recording.py)."""
        call = await self.get(ref)
        return await stream_recording(self._exotel, call.recording_url, range_header)

    async def events(self, ref: str) -> list[Row[Any]]:
        """What Exotel said about the call, in the order it was received."""
        call = await self.get(ref)
        query = (
            select(call_events).where(call_events.c.call_id == call.id).order_by(call_events.c.id)
        )
        async with self._autocommit.connect() as conn:
            return list((await conn.execute(query)).all())

    async def list(self, filters: CallFilters, *, limit: int, cursor: str | None) -> str:
        """A page of GET /calls, as JSON (1 round trip)."""
        conditions = self._conditions(filters)
        if cursor is not None:
            conditions["cursor"] = decode_cursor(cursor)
        async with self._pool.connection() as conn:
            found = await store.read_page(conn, conditions, limit + 1)
        next_cursor = None
        if len(found) > limit:
            found = found[:limit]
            _, created_at, call_id = found[-1]
            next_cursor = encode_cursor(created_at, call_id)
        items = ",".join(resource for resource, _, _ in found)
        return f'{{"items":[{items}],"next_cursor":{json.dumps(next_cursor)}}}'

    def _conditions(self, filters: CallFilters) -> dict[str, Any]:
        """The filters as store.read_page takes them; numbers in E.164, or a 422."""
        conditions: dict[str, Any] = {
            name: getattr(filters, name)
            for name in ("status", "custom_field", "created_after", "created_before")
            if getattr(filters, name) is not None
        }
        errors = []
        for field_name, name in (("from", "from_number"), ("to", "to_number")):
            value = getattr(filters, name)
            if value is None:
                continue
            normalised = to_e164(value, self._default_country)
            if normalised is None:
                errors.append({"field": field_name, "message": "Not a valid phone number"})
            conditions[name] = normalised
        if errors:
            raise validation_problem(errors)
        return conditions


def _not_found(ref: str) -> Problem:
    return Problem(404, "call-not-found", f"No call has the sid or id {ref!r}")
