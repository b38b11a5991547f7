"""Exotel's own sample payloads (from its connect API page), as test data."""

from __future__ import annotations

from typing import Any

CONNECT_ANSWER: dict[str, Any] = {
    "Call": {
        "Sid": "c5797dcbaaeed7678c4062a4a3ed2f8a",
        "ParentCallSid": None,
        "DateCreated": "2017-03-03 10:48:33",
        "DateUpdated": "2017-03-03 10:48:33",
        "AccountSid": "Exotel",
        "To": "0XXXXX38847",
        "From": "0XXXXX30240",
        "PhoneNumberSid": "0XXXXXX4890",
        "Status": "in-progress",
        "StartTime": "2017-03-03 10:48:33",
        "EndTime": None,
        "Duration": None,
        "Price": None,
        "Direction": "outbound-api",
        "AnsweredBy": None,
        "ForwardedFrom": None,
        "CallerName": None,
        "Uri": "/v1/Accounts/Exotel/Calls.json/c5797dcbaaeed7678c4062a4a3ed2f8a",
        "RecordingUrl": None,
    }
}


def connect_answer(sid: str, **changes: Any) -> dict[str, Any]:
    return {"Call": {**CONNECT_ANSWER["Call"], "Sid": sid, **changes}}


def rest_exception(status: int, message: str, code: int | str | None = None) -> dict[str, Any]:
    return {"RestException": {"Status": status, "Message": message, "Code": code}}
