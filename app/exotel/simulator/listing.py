"""Bulk call details (`GET Calls.json`): Exotel's filters, its date window and its three
paging shapes.

Like Exotel, a listing never shows ongoing calls; `DateCreated` spans at most a month,
starts at most six months back, and is the last 31 days when not given.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final
from urllib.parse import urlencode

from starlette.datastructures import QueryParams

from app.exotel.schemas import EXOTEL_TIMEZONE
from app.exotel.simulator.config import Paging
from app.exotel.simulator.state import EXOTEL_TIME_FORMAT, SimulatedCall
from app.exotel.simulator.wire import same_number

DEFAULT_PAGE_SIZE: Final = 50
MAX_PAGE_SIZE: Final = 100
MAX_SIDS_PER_QUERY: Final = 100
MAX_NUMBERS_PER_FILTER: Final = 5
LONGEST_WINDOW: Final = timedelta(days=31)  # "at most one month"; also the default window
OLDEST_START: Final = timedelta(days=183)  # "at most six months back"
FILTERS: Final = ("Sid", "To", "From", "DateCreated", "details")


@dataclass(frozen=True)
class ListingQuery:
    """A bulk call-details request, read and checked as Exotel would (ValueError: 400)."""

    sids: frozenset[str]
    to_numbers: tuple[str, ...]
    from_numbers: tuple[str, ...]
    created_from: datetime
    created_to: datetime
    page_size: int
    after: str | None
    page_number: int
    with_details: bool

    @classmethod
    def read(cls, query: QueryParams, now: datetime) -> ListingQuery:
        sids = frozenset(sid.strip() for sid in query.get("Sid", "").split(",") if sid.strip())
        if len(sids) > MAX_SIDS_PER_QUERY:
            raise ValueError(f"Sid accepts at most {MAX_SIDS_PER_QUERY} values")
        created_from, created_to = _date_window(query.get("DateCreated"), now)
        page = query.get("Page", "0")
        return cls(
            sids=sids,
            to_numbers=_numbers(query, "To"),
            from_numbers=_numbers(query, "From"),
            created_from=created_from,
            created_to=created_to,
            page_size=_page_size(query.get("PageSize")),
            # "After" in the Metadata shapes, "AfterSid" in the guide's: either works.
            after=query.get("AfterSid") or query.get("After") or None,
            page_number=int(page) if page.isdigit() else 0,
            with_details=query.get("details", "").lower() == "true",
        )

    def matches(self, call: SimulatedCall) -> bool:
        return _matches(call.to_number, self.to_numbers) and _matches(
            call.from_number, self.from_numbers
        )


@dataclass(frozen=True)
class Page:
    calls: list[SimulatedCall]
    start: int  # position of the first call in the whole listing
    next_after: str | None  # the cursor of the next page, if there is one


def page_of(listed: list[SimulatedCall], query: ListingQuery) -> Page:
    """The page the query's cursor points at. The cursor is the Sid of the previous
    page's last call: new calls land before it in newest-first order, so pages never
    shift under a reader."""
    start = 0
    if query.after is not None:
        positions = [index for index, call in enumerate(listed) if call.sid == query.after]
        if not positions:
            raise ValueError("AfterSid does not name a call of this listing")
        start = positions[0] + 1
    calls = listed[start : start + query.page_size]
    more = start + query.page_size < len(listed)
    return Page(calls, start, calls[-1].sid if more and calls else None)


def paged_answer(
    shape: Paging,
    *,
    path: str,
    raw_query: QueryParams,
    query: ListingQuery,
    listed: list[SimulatedCall],
    page: Page,
    calls: list[dict[str, Any]],
) -> dict[str, Any]:
    """One page in the shape `shape` names, of the three Exotel documents."""
    filters = [(name, raw_query[name]) for name in FILTERS if name in raw_query]
    filters.append(("PageSize", str(query.page_size)))
    cursor = "AfterSid" if shape == "after-sid" else "After"

    def uri(after: str | None, **extra: str) -> str:
        params = filters if after is None else [*filters, (cursor, after)]
        return f"{path}?{urlencode([*params, *extra.items()])}"

    next_uri = None
    if page.next_after is not None:
        extra = {"Page": str(query.page_number + 1)} if shape == "after-sid" else {}
        next_uri = uri(page.next_after, **extra)
    if shape == "after-sid":
        metadata = {"PageSize": query.page_size, "Page": query.page_number, "NextPageUri": next_uri}
        return {"Metadata": metadata, "Calls": calls}
    previous_uri = None
    if page.start > 0:
        previous_start = max(page.start - query.page_size, 0)
        previous_uri = uri(listed[previous_start - 1].sid if previous_start else None)
    if shape == "top-level":
        return {"Calls": calls, "PrevPageUri": previous_uri, "NextPageUri": next_uri}
    metadata = {
        "Total": len(listed),
        "PageSize": query.page_size,
        "FirstPageUri": uri(None),
        "PrevPageUri": previous_uri,
        "NextPageUri": next_uri,
    }
    return {"Metadata": metadata, "Calls": calls}


def _page_size(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_PAGE_SIZE
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError("PageSize must be a positive integer")
    return min(int(raw), MAX_PAGE_SIZE)


def _numbers(query: QueryParams, name: str) -> tuple[str, ...]:
    numbers = tuple(number.strip() for number in query.get(name, "").split(",") if number.strip())
    if len(numbers) > MAX_NUMBERS_PER_FILTER:
        raise ValueError(f"{name} accepts at most {MAX_NUMBERS_PER_FILTER} numbers")
    return numbers


def _matches(number: str, wanted: tuple[str, ...]) -> bool:
    return not wanted or any(same_number(number, candidate) for candidate in wanted)


def _date_window(raw: str | None, now: datetime) -> tuple[datetime, datetime]:
    """`gte:YYYY-MM-DD HH:mm:ss;lte:YYYY-MM-DD HH:mm:ss` (IST), either bound optional."""
    bounds: dict[str, datetime] = {}
    for condition in filter(None, (raw or "").split(";")):
        operator, _, moment = condition.partition(":")
        if operator not in {"gte", "lte"}:
            raise ValueError(f"DateCreated accepts gte and lte, not {operator!r}")
        try:
            parsed = datetime.strptime(moment.strip(), EXOTEL_TIME_FORMAT)
        except ValueError as exc:
            raise ValueError("DateCreated times must read YYYY-MM-DD HH:mm:ss") from exc
        bounds[operator] = parsed.replace(tzinfo=EXOTEL_TIMEZONE)
    created_to = bounds.get("lte", now)
    created_from = bounds.get("gte", max(created_to - LONGEST_WINDOW, now - OLDEST_START))
    if created_to - created_from > LONGEST_WINDOW:
        raise ValueError("DateCreated may span at most one month")
    if created_from < now - OLDEST_START:
        raise ValueError("DateCreated may start at most six months back")
    return created_from, created_to
