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
import contextlib
import hashlib
import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import phonenumbers
import structlog
from sqlalchemy import Select, select, tuple_
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import joinedload

from app.calls.apply import Applied, apply_update, is_terminal
from app.calls.models import Call, CallEvent, Leg, Notification
from app.calls.schemas import CallCreate, CallOut
from app.calls.tokens import CallbackTokens
from app.config import ApiClient
from app.errors import Problem, validation_problem
from app.exotel.client import (
    ConnectRequest,
    ExotelAuthFailed,
    ExotelClient,
    ExotelError,
    ExotelOutcomeUnknown,
    ExotelRateLimited,
    ExotelRefused,
)
from app.exotel.schemas import CallUpdate
from app.metrics import record_status_change

log = structlog.get_logger(__name__)

# How long an unanswered connect request stays `unknown` before the reconciler looks.
UNKNOWN_GRACE = timedelta(seconds=30)
# A connect request takes at most EXOTEL_TIMEOUT_S (after at most 5 s waiting for the
# outbound limit), so a call still `pending` this long after its row was committed was
# left by a process that died while asking Exotel.
STALE_PENDING = timedelta(minutes=2)
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


def to_e164(number: str, default_country: str) -> str | None:
    try:
        parsed = phonenumbers.parse(number, default_country)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(parsed):
        return None
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def call_location(call: Call) -> str:
    return f"/calls/{call.sid or call.id}"


def encode_cursor(call: Call) -> str:
    raw = json.dumps([call.created_at.isoformat(), str(call.id)]).encode()
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


class CallService:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        exotel: ExotelClient,
        tokens: CallbackTokens,
        *,
        public_base_url: str,
        default_caller_id: str | None,
        default_country: str,
        reconcile_after: timedelta,
    ) -> None:
        self._sessions = sessions
        self._exotel = exotel
        self._tokens = tokens
        self._public_base_url = public_base_url
        self._default_caller_id = default_caller_id
        self._default_country = default_country
        self._reconcile_after = reconcile_after

    # -- placing -------------------------------------------------------------------

    async def place(
        self, client: ApiClient, request: CallCreate, idempotency_key: str | None
    ) -> tuple[Answer, bool]:
        """Place the call; the boolean says whether the answer is an idempotent replay."""
        call = self._new_call(client, request, idempotency_key)
        async with self._sessions() as session:
            if idempotency_key is not None:
                existing = await self._by_idempotency_key(session, client, idempotency_key)
                if existing is not None:
                    return self._replay(existing, call.request_fingerprint), True
            session.add(call)
            try:
                await session.commit()
            except IntegrityError:
                # Another request with the same key committed first.
                await session.rollback()
                assert idempotency_key is not None
                existing = await self._by_idempotency_key(session, client, idempotency_key)
                assert existing is not None
                return self._replay(existing, call.request_fingerprint), True
        log.info(
            "call_pending",
            call_id=str(call.id),
            from_number=mask_number(call.from_number),
            to_number=mask_number(call.to_number),
        )
        # Shielded: a client that hangs up must not stop us recording Exotel's answer.
        return await asyncio.shield(self._ask_exotel(call)), False

    def _new_call(self, client: ApiClient, request: CallCreate, key: str | None) -> Call:
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
        call_id = uuid.uuid4()
        return Call(
            id=call_id,
            status="pending",
            from_number=numbers["from"],
            to_number=numbers["to"],
            caller_id=numbers["caller_id"],
            api_client=client.name,
            idempotency_key=key,
            request_fingerprint=fingerprint,
            legs=[Leg(leg=0, number=numbers["from"]), Leg(leg=1, number=numbers["to"])],
            next_reconcile_at=datetime.now(UTC) + STALE_PENDING,
            **options,
        )

    async def _by_idempotency_key(
        self, session: AsyncSession, client: ApiClient, key: str
    ) -> Call | None:
        query = select(Call).where(Call.api_client == client.name, Call.idempotency_key == key)
        return (await session.execute(query)).scalar_one_or_none()

    def _replay(self, call: Call, fingerprint: str | None) -> Answer:
        if call.request_fingerprint != fingerprint:
            raise Problem(
                422,
                "idempotency-key-reused",
                "This Idempotency-Key was already used with a different request body",
            )
        if call.response_status is not None and call.response_body is not None:
            headers = {"Location": call_location(call)} if call.response_status == 201 else {}
            return Answer(call.response_status, call.response_body, headers)
        if call.status == "pending":
            raise Problem(
                409,
                "request-in-progress",
                "A request with this Idempotency-Key is still being processed; retry shortly",
                headers={"Retry-After": "1"},
            )
        return self._current_answer(call)

    def _current_answer(self, call: Call) -> Answer:
        """The answer for a call whose request got no answer of its own from Exotel."""
        if call.sid is not None:
            return Answer(201, self.resource(call), {"Location": call_location(call)})
        return self._unknown_answer(call)

    async def _ask_exotel(self, call: Call) -> Answer:
        request = ConnectRequest(
            from_number=call.from_number,
            to_number=call.to_number,
            caller_id=call.caller_id,
            status_callback=self.status_callback_url(call.id),
            call_type=call.call_type,
            time_limit=call.time_limit,
            time_out=call.time_out,
            wait_url=call.wait_url,
            record=call.record,
            recording_channels=call.recording_channels,
            recording_format=call.recording_format,
            custom_field=call.custom_field,
            start_playback_to=EXOTEL_VALUES.get(call.start_playback_to or ""),
            start_playback_value=call.start_playback_value,
            stream_url=call.stream_url,
            stream_begin=EXOTEL_VALUES.get(call.stream_begin or ""),
        )
        try:
            exotel_call = await self._exotel.connect(request)
        except ExotelError as exc:
            return await self._record_failure(call.id, exc)

        async with self._sessions() as session, session.begin():
            stored = await self.lock(session, call.id)
            if (await self.apply(session, stored, exotel_call.to_update())).changed:
                # Read back as stored (times in the database's form, the notification).
                await session.refresh(stored)
            if not is_terminal(stored.status):
                stored.next_reconcile_at = stored.created_at + self._reconcile_after
            answer = Answer(201, self.resource(stored), {"Location": call_location(stored)})
            stored.response_status, stored.response_body = answer.status, answer.body
        log.info("call_placed", call_id=str(call.id), sid=exotel_call.sid, status=stored.status)
        return answer

    async def _record_failure(self, call_id: uuid.UUID, exc: ExotelError) -> Answer:
        async with self._sessions() as session, session.begin():
            call = await self.lock(session, call_id)
            if call.status != "pending" or call.sid is not None:
                # Settled while we waited: a callback naming this call got here first, or
                # the reconciler stopped waiting for us. What they found stands.
                return self._current_answer(call)
            call.error_status = exc.status
            call.error_code = None if exc.code is None else str(exc.code)
            call.error_message = exc.message
            if isinstance(exc, ExotelOutcomeUnknown):
                call.status = "unknown"
                call.next_reconcile_at = datetime.now(UTC) + UNKNOWN_GRACE
                log.warning("call_outcome_unknown", call_id=str(call.id), reason=exc.message)
                return self._unknown_answer(call)
            call.status = "failed"
            call.next_reconcile_at = None
            answer = self._failure_answer(call, exc)
            if isinstance(exc, ExotelRefused):
                # A refusal is final: replay it. Anything else may succeed if retried
                # later, so the key is released for that retry.
                call.response_status, call.response_body = answer.status, answer.body
            else:
                call.idempotency_key = None
        log.warning(
            "call_not_placed", call_id=str(call_id), exotel_status=exc.status, reason=exc.message
        )
        return answer

    def _failure_answer(self, call: Call, exc: ExotelError) -> Answer:
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

    def _unknown_answer(self, call: Call) -> Answer:
        problem = Problem(
            504,
            "exotel-outcome-unknown",
            "Exotel did not answer in time; the call may or may not have been placed. "
            "Do not retry with a new key: read the call by its id until it is settled.",
            extra={"id": str(call.id), "call_status": call.status},
        )
        return Answer(problem.status, problem.body(), {"Location": call_location(call)})

    def status_callback_url(self, call_id: uuid.UUID) -> str:
        return f"{self._public_base_url}/callbacks/exotel?token={self._tokens.for_call(call_id)}"

    # -- updating -------------------------------------------------------------------

    @staticmethod
    async def lock(session: AsyncSession, call_id: uuid.UUID) -> Call:
        query = select(Call).where(Call.id == call_id).with_for_update()
        return (await session.execute(query)).scalar_one()

    @staticmethod
    async def apply(session: AsyncSession, call: Call, update: CallUpdate) -> Applied:
        """Apply what Exotel said to a locked call, within the caller's transaction.

        A call that finishes here gets its one `call.finished` notification in the same
        transaction (the outbox the relay delivers from), and needs no reconciling.
        """
        applied = apply_update(call, update)
        if applied.became_terminal:
            call.next_reconcile_at = None
        if applied.changed:
            record_status_change(applied.previous_status, applied.status)
            await session.flush()
            if applied.became_terminal and call.notify_url is not None:
                await session.execute(
                    insert(Notification)
                    .values(id=f"msg_{uuid.uuid4().hex}", call_id=call.id, url=call.notify_url)
                    .on_conflict_do_nothing(index_elements=[Notification.call_id])
                )
        return applied

    # -- reading --------------------------------------------------------------------

    @staticmethod
    def resource(call: Call) -> dict[str, Any]:
        return CallOut.from_call(call).model_dump(mode="json", by_alias=True)

    async def get(self, ref: str) -> Call:
        query = select(Call).where(Call.sid == ref)
        with contextlib.suppress(ValueError):
            query = select(Call).where((Call.sid == ref) | (Call.id == uuid.UUID(ref)))
        # One statement, where lazy="selectin" would send three (call, legs, notification).
        query = query.options(joinedload(Call.legs), joinedload(Call.notification)).limit(1)
        async with self._sessions() as session:
            call = (await session.execute(query)).unique().scalar_one_or_none()
        if call is None:
            raise Problem(404, "call-not-found", f"No call has the sid or id {ref!r}")
        return call

    async def events(self, ref: str) -> list[CallEvent]:
        """What Exotel said about the call, in the order it was applied."""
        call = await self.get(ref)
        query = select(CallEvent).where(CallEvent.call_id == call.id).order_by(CallEvent.id)
        async with self._sessions() as session:
            return list((await session.scalars(query)).all())

    async def list(
        self, filters: CallFilters, *, limit: int, cursor: str | None
    ) -> tuple[list[Call], str | None]:
        query = self._filtered(filters)
        if cursor is not None:
            created_at, call_id = decode_cursor(cursor)
            query = query.where(tuple_(Call.created_at, Call.id) < (created_at, call_id))
        query = query.order_by(Call.created_at.desc(), Call.id.desc()).limit(limit + 1)
        async with self._sessions() as session:
            calls = list((await session.scalars(query)).all())
        if len(calls) <= limit:
            return calls, None
        return calls[:limit], encode_cursor(calls[limit - 1])

    def _filtered(self, filters: CallFilters) -> Select[Call]:
        query = select(Call)
        errors = []
        for name, column, value in (
            ("from", Call.from_number, filters.from_number),
            ("to", Call.to_number, filters.to_number),
        ):
            if value is None:
                continue
            normalised = to_e164(value, self._default_country)
            if normalised is None:
                errors.append({"field": name, "message": "Not a valid phone number"})
            query = query.where(column == normalised)
        if errors:
            raise validation_problem(errors)
        if filters.status is not None:
            query = query.where(Call.status == filters.status)
        if filters.custom_field is not None:
            query = query.where(Call.custom_field == filters.custom_field)
        if filters.created_after is not None:
            query = query.where(Call.created_at >= filters.created_after)
        if filters.created_before is not None:
            query = query.where(Call.created_at < filters.created_before)
        return query
