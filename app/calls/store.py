"""Calls in Postgres, through SQLAlchemy Core: the statements of the hot paths and the reads.

Each function states its round trips. Writers that change what Exotel said lock the
call first (`lock`), so that callbacks, connect answers and reconciliation apply one
after another; readers take no lock.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import orjson
import psycopg
from sqlalchemy import (
    ARRAY,
    BigInteger,
    ColumnElement,
    Select,
    Table,
    any_,
    bindparam,
    func,
    literal_column,
    select,
    text,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import aggregate_order_by, insert
from sqlalchemy.ext.asyncio import AsyncConnection

from app.calls.apply import Applied
from app.calls.models import Call, CallEvent, Leg, Notification
from app.calls.state import APPLIED_COLUMNS, CALL_STATE_COLUMNS, CallState, LegState, NotifyState
from app.metrics import record_status_change

calls = cast(Table, Call.__table__)
call_legs = cast(Table, Leg.__table__)
call_events = cast(Table, CallEvent.__table__)
notifications = cast(Table, Notification.__table__)

_LEG_FIELDS = ("leg", "number", "status", "on_call_duration", "answered_by")
# The legs of a call as one JSON array of arrays, read with the call in one statement.
_LEGS_JSON = (
    select(
        func.coalesce(
            func.json_agg(
                aggregate_order_by(
                    func.json_build_array(*(call_legs.c[name] for name in _LEG_FIELDS)),
                    call_legs.c.leg,
                )
            ),
            literal_column("'[]'::json"),
        )
    )
    .where(call_legs.c.call_id == calls.c.id)
    .scalar_subquery()
    .label("legs_json")
)


def _recordset(table: Table, columns: Sequence[str], **others: str) -> str:
    """`json_to_recordset(:rows) AS v(...)`: the rows of the JSON array `:rows`, with the
    columns of `table` named (typed as the table types them) and the others (typed as
    given).

    The types drop lengths and precisions (`VARCHAR(32)` -> `VARCHAR`): a value too long
    is then refused where it is stored in the column, not cut to fit.
    """
    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
    types = {
        name: re.sub(r"\(.*\)", "", table.c[name].type.compile(dialect=dialect)) for name in columns
    }
    types |= others
    return (
        "json_to_recordset(CAST(:rows AS json)) AS v("
        + ", ".join(f"{name} {sql_type}" for name, sql_type in types.items())
        + ")"
    )


def _json_rows(rows: list[dict[str, Any]]) -> dict[str, str]:
    """`rows` as `_recordset` takes them: times, numbers and ids as their text, which
    Postgres reads back as the column's type (orjson writes ids and times itself; a
    Decimal goes through `str`)."""
    return {"rows": orjson.dumps(rows, default=str).decode()}


_CALL_FIELDS = ("id", *APPLIED_COLUMNS, "updated_at", "details_next_at")
# All the changed calls in one statement, their legs in another, each given its rows as
# one JSON text: serialising it costs a fraction of binding every row of an executemany, or
# every element of an array. (Built from constants only.)
_SAVE_CALLS = text(
    f"""
    UPDATE calls SET {", ".join(f"{name} = v.{name}" for name in APPLIED_COLUMNS)},
        updated_at = v.updated_at,
        -- A finished call needs no more looks at Exotel, but for its figures.
        next_reconcile_at = CASE WHEN v.finished THEN NULL ELSE calls.next_reconcile_at END,
        details_next_at = coalesce(v.details_next_at, calls.details_next_at)
    FROM {_recordset(calls, _CALL_FIELDS, finished="BOOLEAN")}
    WHERE calls.id = v.id
    """  # noqa: S608
)
_SAVE_LEGS = text(
    f"""
    INSERT INTO call_legs (call_id, {", ".join(_LEG_FIELDS)})
    SELECT * FROM {_recordset(call_legs, ("call_id", *_LEG_FIELDS))}
    ON CONFLICT (call_id, leg) DO UPDATE SET status = excluded.status,
        on_call_duration = excluded.on_call_duration, answered_by = excluded.answered_by
    """  # noqa: S608
)


def _legs_from_json(rows: list[list[Any]] | None) -> list[LegState]:
    return [LegState(*row) for row in rows or ()]


FINISHED = "call.finished"  # the notification of a call's end
UPDATED = "call.updated"  # the notification of figures that arrived after the end


def call_query() -> Select[Any]:
    """Calls with their legs and `call.finished` notification: one statement, one row
    per call."""
    return select(
        *(calls.c[name] for name in CALL_STATE_COLUMNS),
        _LEGS_JSON,
        notifications.c.status.label("notify_status"),
        notifications.c.attempts.label("notify_attempts"),
        notifications.c.last_error.label("notify_last_error"),
    ).select_from(
        calls.outerjoin(
            notifications,
            (notifications.c.call_id == calls.c.id) & (notifications.c.event_type == FINISHED),
        )
    )


def state_from_row(row: Any) -> CallState:
    notify = None
    if row.notify_status is not None:
        notify = NotifyState(row.notify_status, row.notify_attempts, row.notify_last_error)
    return CallState.from_row(row, _legs_from_json(row.legs_json), notify)


# Built once: a read only binds its values (no statement built or cache-keyed per request).
_BY_ID = call_query().where(calls.c.id == bindparam("call_id")).limit(1)
_BY_SID = call_query().where(calls.c.sid == bindparam("ref")).limit(1)
_BY_SID_OR_ID = (
    call_query()
    .where((calls.c.sid == bindparam("ref")) | (calls.c.id == bindparam("call_id")))
    .limit(1)
)


def _utc_text(column: str) -> str:
    """A timestamptz as the API writes times (as pydantic does): UTC, `Z`, microseconds
    only when there are any."""
    return (
        f"CASE WHEN date_trunc('second', {column}) = {column} "
        f"""THEN to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') """
        f"""ELSE to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') END"""
    )


# The call resource (CallOut: the same fields, values and order), built by Postgres, so
# that a read costs the service one statement and no object per row. Tested equal to
# CallOut.from_state. (Statements here are put together from constants only.)
CALL_RESOURCE_JSON = f"""
json_build_object(
    'id', c.id, 'sid', c.sid, 'status', c.status, 'from', c.from_number,
    'to', c.to_number, 'caller_id', c.caller_id, 'direction', c.direction,
    'custom_field', c.custom_field,
    'created_at', {_utc_text("c.created_at")}, 'updated_at', {_utc_text("c.updated_at")},
    'start_time', {_utc_text("c.start_time")}, 'end_time', {_utc_text("c.end_time")},
    'duration', c.duration, 'conversation_duration', c.conversation_duration,
    'price', c.price::float8, 'recording_url', c.recording_url, 'answered_by', c.answered_by,
    'legs', coalesce((
        SELECT json_agg(json_build_object('leg', l.leg, 'number', l.number,
                                          'status', l.status,
                                          'on_call_duration', l.on_call_duration)
                        ORDER BY l.leg)
        FROM call_legs l WHERE l.call_id = c.id), '[]'::json),
    'error', CASE WHEN c.error_message IS NOT NULL OR c.error_status IS NOT NULL THEN
        json_build_object('status', c.error_status, 'code', c.error_code,
                          'message', c.error_message) END,
    'notify', CASE WHEN n.call_id IS NOT NULL THEN
        json_build_object('status', n.status, 'attempts', n.attempts,
                          'last_error', n.last_error) END
)::text
"""  # noqa: S608
_RESOURCE_FROM = (
    f"FROM calls c LEFT JOIN notifications n ON n.call_id = c.id AND n.event_type = '{FINISHED}'"
)
_RESOURCE_BY_ID = f"SELECT {CALL_RESOURCE_JSON} {_RESOURCE_FROM} WHERE c.id = %(id)s"
_RESOURCE_BY_SID = f"SELECT {CALL_RESOURCE_JSON} {_RESOURCE_FROM} WHERE c.sid = %(ref)s LIMIT 1"
_RESOURCE_BY_SID_OR_ID = (
    f"SELECT {CALL_RESOURCE_JSON} {_RESOURCE_FROM} WHERE c.sid = %(ref)s OR c.id = %(id)s LIMIT 1"
)
# Filters of GET /calls: query field -> condition on `calls c`.
PAGE_CONDITIONS = {
    "status": "c.status = %(status)s",
    "from_number": "c.from_number = %(from_number)s",
    "to_number": "c.to_number = %(to_number)s",
    "custom_field": "c.custom_field = %(custom_field)s",
    "created_after": "c.created_at >= %(created_after)s",
    "created_before": "c.created_at < %(created_before)s",
    "cursor": "(c.created_at, c.id) < (%(cursor_created_at)s, %(cursor_id)s)",
}


async def read_resource(conn: psycopg.AsyncConnection[Any], ref: str) -> str | None:
    """The call resource as JSON, of the call whose Exotel Sid, or else whose id, `ref`
    is (1 round trip)."""
    try:
        call_id = uuid.UUID(ref)
    except ValueError:
        cursor = await conn.execute(_RESOURCE_BY_SID, {"ref": ref})
    else:
        cursor = await conn.execute(_RESOURCE_BY_SID_OR_ID, {"ref": ref, "id": call_id})
    row = await cursor.fetchone()
    return None if row is None else str(row[0])


async def read_resource_by_id(conn: psycopg.AsyncConnection[Any], call_id: uuid.UUID) -> str:
    """The call resource as JSON, of a call known to exist (1 round trip)."""
    row = await (await conn.execute(_RESOURCE_BY_ID, {"id": call_id})).fetchone()
    assert row is not None
    return str(row[0])


async def read_page(
    conn: psycopg.AsyncConnection[Any], filters: dict[str, Any], limit: int
) -> list[tuple[str, str, str]]:
    """Up to `limit` calls matching `filters` (keys of PAGE_CONDITIONS; `cursor` as
    `cursor_created_at` and `cursor_id`), newest first: (resource JSON, created_at in
    ISO 8601, id) each, all text, as the page and its cursor use them (1 round trip)."""
    conditions = [condition for name, condition in PAGE_CONDITIONS.items() if name in filters]
    where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
    query = (
        f"SELECT {CALL_RESOURCE_JSON}, to_json(c.created_at) #>> '{{}}', c.id::text "
        f"{_RESOURCE_FROM} {where} "
        "ORDER BY c.created_at DESC, c.id DESC LIMIT %(limit)s"
    )
    params = {**filters, "limit": limit}
    if "cursor" in filters:
        params["cursor_created_at"], params["cursor_id"] = filters["cursor"]
    cursor = await conn.execute(query, params)
    return await cursor.fetchall()


async def read(conn: AsyncConnection, call_id: uuid.UUID) -> CallState | None:
    """The call with this id (1 round trip)."""
    return _state_or_none((await conn.execute(_BY_ID, {"call_id": call_id})).one_or_none())


async def read_by_ref(conn: AsyncConnection, ref: str) -> CallState | None:
    """The call whose Exotel Sid, or else whose id, `ref` is (1 round trip)."""
    try:
        call_id = uuid.UUID(ref)
    except ValueError:
        row = (await conn.execute(_BY_SID, {"ref": ref})).one_or_none()
    else:
        row = (await conn.execute(_BY_SID_OR_ID, {"ref": ref, "call_id": call_id})).one_or_none()
    return _state_or_none(row)


def _state_or_none(row: Any) -> CallState | None:
    return None if row is None else state_from_row(row)


async def lock(
    conn: AsyncConnection,
    call_ids: Sequence[uuid.UUID] | Select[tuple[uuid.UUID]],
    *,
    skip_locked: bool = False,
) -> dict[uuid.UUID, CallState]:
    """Lock calls (in id order, so lockers never deadlock) and read them (2 round trips).

    The legs are read by a second statement on purpose: a statement that waited for the
    lock sees the locked row as it is now, but everything else as when it started.
    """
    query = (
        select(*(calls.c[name] for name in CALL_STATE_COLUMNS))
        .where(calls.c.id.in_(call_ids))
        .order_by(calls.c.id)
        # NO KEY UPDATE: storing a callback takes KEY SHARE on its call (the foreign key),
        # which this lock lets through; FOR UPDATE would hold every callback for a call in
        # an applier's batch until the batch commits.
        .with_for_update(skip_locked=skip_locked, key_share=True)
    )
    rows = (await conn.execute(query)).all()
    if not rows:
        return {}
    legs: dict[uuid.UUID, list[LegState]] = {row.id: [] for row in rows}
    leg_rows = await conn.execute(
        select(call_legs.c.call_id, *(call_legs.c[name] for name in _LEG_FIELDS))
        .where(call_legs.c.call_id.in_(list(legs)))
        .order_by(call_legs.c.call_id, call_legs.c.leg)
    )
    for leg_row in leg_rows:
        legs[leg_row.call_id].append(LegState(*leg_row[1:]))
    return {row.id: CallState.from_row(row, legs[row.id]) for row in rows}


async def save_applied(
    conn: AsyncConnection,
    results: Sequence[tuple[CallState, Applied]],
    *,
    details_after: timedelta,
) -> None:
    """Write back the calls that `apply_update` changed, within the caller's transaction.

    Calls and legs are written with one executemany each; a call that finished here gets
    its one `call.finished` notification (the outbox the relay delivers from), and, if
    Exotel has yet to fill in its figures, a first look for them `details_after` after
    its end (app/jobs/details.py). At most 3 round trips, whatever the number of calls.
    """
    changed = [(call, applied) for call, applied in results if applied.changed]
    if not changed:
        return
    now = datetime.now(UTC)
    for call, _ in changed:
        call.updated_at = now
    await conn.execute(
        _SAVE_CALLS,
        _json_rows(
            [
                {
                    "id": call.id,
                    "updated_at": now,
                    "finished": applied.became_terminal,
                    "details_next_at": _first_details_look(call, applied, now, details_after),
                    **{name: getattr(call, name) for name in APPLIED_COLUMNS},
                }
                for call, applied in changed
            ]
        ),
    )
    await conn.execute(
        _SAVE_LEGS,
        _json_rows(
            [
                {"call_id": call.id, **{name: getattr(leg, name) for name in _LEG_FIELDS}}
                for call, _ in changed
                for leg in call.legs
            ]
        ),
    )
    await add_notifications(
        conn, [call for call, applied in changed if applied.became_terminal], FINISHED
    )
    for _, applied in changed:
        record_status_change(applied.previous_status, applied.status)


def _first_details_look(
    call: CallState, applied: Applied, now: datetime, details_after: timedelta
) -> datetime | None:
    """When to first look for the figures of a call that finished here, if it needs to."""
    if not applied.became_terminal or call.sid is None or call.price is not None:
        return None
    # Counted from our clock when Exotel's end time is missing or ahead of it.
    return min(call.end_time or now, now) + details_after


async def add_notifications(
    conn: AsyncConnection, changed: Sequence[CallState], event_type: str
) -> None:
    """Queue an `event_type` notification for those of `changed` with a notify_url, once
    per call and type (at most 1 round trip)."""
    told = [call for call in changed if call.notify_url]
    if not told:
        return
    await conn.execute(
        insert(notifications)
        .values(
            [
                {
                    "id": f"msg_{uuid.uuid4().hex}",
                    "call_id": call.id,
                    "event_type": event_type,
                    "url": call.notify_url,
                }
                for call in told
            ]
        )
        .on_conflict_do_nothing(
            index_elements=[notifications.c.call_id, notifications.c.event_type]
        )
    )


def ids_in(column: ColumnElement[int], ids: Sequence[int]) -> ColumnElement[bool]:
    """`column = ANY(:ids)`: one cached statement whatever the number of ids."""
    return column == any_(bindparam(None, list(ids), type_=ARRAY(BigInteger)))
