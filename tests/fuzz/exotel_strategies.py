"""Hypothesis strategies for Exotel-shaped status callbacks, good and hostile.

Field names are mostly Exotel's, values mostly what Exotel sends, and the rest what an
attacker (or a broken proxy) might: huge exponents, `Infinity`, NUL, lone surrogates,
deep nesting, legs that do not exist, digits from other scripts.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

import httpx
from hypothesis import strategies as st

SID = "492205107c5fb48f4ac25d1f77759339"
STATUS_WORDS = [
    "queued",
    "ringing",
    "in-progress",
    "completed",
    "failed",
    "busy",
    "no-answer",
    "canceled",
]
TEXT_FIELDS = ["From", "To", "PhoneNumberSid", "Direction", "RecordingUrl", "CustomField"]
TIME_FIELDS = ["DateCreated", "DateUpdated", "StartTime", "EndTime"]
LEG_FIELDS = ["Status", "OnCallDuration", "AnsweredBy"]

HOSTILE_TEXT = [
    "",
    " ",
    "null",
    "None",
    "\x00",
    "completed\x00",
    "\ud800",
    "\xff\xfe",
    "1e1000000",
    "-1e1000000",
    "9" * 5000,
    "Infinity",
    "-Infinity",
    "NaN",
    "0x10",
    "1_000",
    "\u0663\u0663",
    "0001-01-01 00:00:00",
    "9999-12-31 23:59:59",
    "1970-01-01 05:30:00",
    "2026-13-45 99:99:99",
    "x" * 10_000,
]

# Text that forms can carry: no lone surrogates (they cannot be encoded as UTF-8).
form_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)
any_text = st.text(max_size=40)
hostile_text = st.sampled_from(HOSTILE_TEXT)
numbers = st.one_of(
    st.integers(min_value=-(10**6), max_value=10**6).map(str),
    st.decimals(allow_nan=True, allow_infinity=True).map(str),
    st.floats().map(str),
    st.integers(min_value=0, max_value=90_000).map(str),
)
times = st.one_of(
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)).map(
        lambda moment: moment.strftime("%Y-%m-%d %H:%M:%S")
    ),
    st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2030, 1, 1)).map(str),
)
words = st.one_of(st.sampled_from(STATUS_WORDS), st.sampled_from(STATUS_WORDS).map(str.upper))
form_value = st.one_of(form_text, hostile_text.filter(lambda t: "\ud800" not in t), numbers)
field_names = st.one_of(
    st.sampled_from(["Status", "EventType", "ConversationDuration", *TEXT_FIELDS, *TIME_FIELDS]),
    form_text,
)
leg_index = st.one_of(
    st.integers(min_value=0, max_value=12).map(str),
    st.sampled_from(["\u0663", "00", "-1", "99999999999999999999", "", "a"]),
)


@st.composite
def form_fields(draw: st.DrawFn) -> list[tuple[str, str]]:
    """Callback fields as a form sends them: flat names, legs as `Legs[i][Field]`."""
    fields: list[tuple[str, str]] = []
    if draw(st.integers(min_value=0, max_value=9)):  # now and then, no CallSid at all
        fields.append(("CallSid", draw(st.one_of(st.just(SID), form_value))))
    fields.append(("Status", draw(st.one_of(words, form_value))))
    fields.append(("ConversationDuration", draw(st.one_of(numbers, form_value))))
    for name in draw(st.lists(st.sampled_from(TIME_FIELDS), max_size=4)):
        fields.append((name, draw(st.one_of(times, form_value))))
    for _ in range(draw(st.integers(min_value=0, max_value=6))):
        name = f"Legs[{draw(leg_index)}][{draw(st.sampled_from(LEG_FIELDS))}]"
        fields.append((name, draw(st.one_of(words, numbers, form_value))))
    fields += draw(st.lists(st.tuples(field_names, form_value), max_size=4))
    return fields


json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    any_text,
    hostile_text,
    numbers,
    words,
    times,
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(any_text, inner, max_size=3)
    ),
    max_leaves=8,
)


@st.composite
def json_documents(draw: st.DrawFn) -> dict[str, Any]:
    """A JSON callback object: Exotel's fields with good, odd or hostile values."""
    document: dict[str, Any] = {"CallSid": draw(st.one_of(st.just(SID), json_values))}
    document["Status"] = draw(st.one_of(words, json_values))
    document["ConversationDuration"] = draw(st.one_of(numbers, json_values))
    for name in draw(st.lists(st.sampled_from(TIME_FIELDS + TEXT_FIELDS), max_size=6)):
        document[name] = draw(st.one_of(times, json_values))
    legs = st.fixed_dictionaries(
        {},
        optional={
            "Status": st.one_of(words, json_values),
            "OnCallDuration": st.one_of(numbers, json_values),
            "AnsweredBy": json_values,
        },
    )
    document["Legs"] = draw(
        st.one_of(st.lists(st.one_of(legs, json_values), max_size=5), json_values)
    )
    return document


def json_body(document: dict[str, Any]) -> bytes:
    """JSON as a sender would write it: NaN and Infinity as the bare words Python emits,
    lone surrogates as \\ud800 escapes."""
    return json.dumps(document).encode()


def urlencoded_body(fields: list[tuple[str, str]]) -> tuple[bytes, str]:
    return urlencode(fields).encode(), "application/x-www-form-urlencoded"


def multipart_body(fields: list[tuple[str, str]], cut: int = 0) -> tuple[bytes, str]:
    request = httpx.Request(
        "POST", "http://callbridge.test", files=[(name, (None, value)) for name, value in fields]
    )
    body = request.read()
    return body[: len(body) - cut], request.headers["content-type"]


@st.composite
def callback_bodies(draw: st.DrawFn) -> tuple[bytes, str]:
    """(body, content type) in any of Exotel's three encodings, or broken ones."""
    kind = draw(st.sampled_from(["json", "urlencoded", "multipart", "bytes", "deep"]))
    if kind == "json":
        return json_body(draw(json_documents())), "application/json"
    if kind == "deep":
        # Written out: json.dumps itself gives up on such depths.
        depth = draw(st.integers(min_value=100, max_value=30_000))
        field = draw(st.sampled_from(["Status", "Legs", "ConversationDuration"]))
        nested = "[" * depth + '"completed"' + "]" * depth
        return f'{{"CallSid": "{SID}", "{field}": {nested}}}'.encode(), "application/json"
    if kind == "urlencoded":
        return urlencoded_body(draw(form_fields()))
    if kind == "multipart":
        return multipart_body(draw(form_fields()), cut=draw(st.sampled_from([0, 0, 0, 2, 4, 9])))
    content_type = draw(
        st.sampled_from(
            [
                "application/json",
                "application/x-www-form-urlencoded",
                "multipart/form-data; boundary=b",
                "multipart/form-data",
            ]
        )
    )
    return draw(st.binary(max_size=200)), content_type
