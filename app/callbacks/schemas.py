"""The HTTP shapes of POST /callbacks/exotel beyond Exotel's own payload."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel


class CallbackAccepted(BaseModel):
    """Exotel only looks at the status code; the body helps whoever reads a trace."""

    status: Literal["accepted"] = "accepted"


_LEG = {
    "type": "object",
    "properties": {
        "Status": {"type": ["string", "null"], "examples": ["completed"]},
        "OnCallDuration": {"type": ["integer", "string", "null"], "examples": [41]},
        "AnsweredBy": {"type": ["string", "null"]},
    },
}
_FIELDS: dict[str, Any] = {
    "CallSid": {"type": "string", "examples": ["492205107c5fb48f4ac25d1f77759339"]},
    "EventType": {"type": "string", "examples": ["terminal", "answered"]},
    "Status": {"type": "string", "examples": ["completed", "no-answer"]},
    "DateCreated": {"type": "string", "examples": ["2019-04-08 03:17:59"]},
    "DateUpdated": {"type": "string", "examples": ["2019-04-08 03:18:35"]},
    "StartTime": {"type": "string"},
    "EndTime": {"type": "string"},
    "ConversationDuration": {"type": ["integer", "string"]},
    "RecordingUrl": {"type": ["string", "null"]},
    "CustomField": {"type": ["string", "null"]},
    "From": {"type": "string"},
    "To": {"type": "string"},
    "PhoneNumberSid": {"type": "string"},
    "Direction": {"type": "string"},
}
_FORM_LEGS = {
    "Legs[0][Status]": {"type": "string"},
    "Legs[0][OnCallDuration]": {"type": "string"},
    "Legs[1][Status]": {"type": "string"},
    "Legs[1][OnCallDuration]": {"type": "string"},
}
_FORM = {"type": "object", "required": ["CallSid"], "properties": {**_FIELDS, **_FORM_LEGS}}
# Exotel's own sample (its numbers masked by Exotel).
_EXAMPLE: dict[str, Any] = {
    "CallSid": "492205107c5fb48f4ac25d1f77759339",
    "EventType": "terminal",
    "DateCreated": "2019-04-08 03:17:59",
    "DateUpdated": "2019-04-08 03:18:35",
    "Status": "completed",
    "To": "+91886799XXXX",
    "From": "+91941374XXXX",
    "PhoneNumberSid": "0113083XXXX",
    "StartTime": "2019-04-08 03:17:59",
    "EndTime": "2019-04-08 03:18:36",
    "Direction": "outbound-api",
    "ConversationDuration": 32,
}
_LEGS_EXAMPLE = [
    {"OnCallDuration": 41, "Status": "completed"},
    {"OnCallDuration": 32, "Status": "completed"},
]
_FORM_EXAMPLE = {name: str(value) for name, value in _EXAMPLE.items()} | {
    f"Legs[{index}][{name}]": str(value)
    for index, leg in enumerate(_LEGS_EXAMPLE)
    for name, value in leg.items()
}

# Documented by hand: the endpoint reads the raw body itself, to store it as received.
CALLBACK_REQUEST_BODY: dict[str, Any] = {
    "required": True,
    "description": "Exotel's status callback, in any of the encodings Exotel uses.",
    "content": {
        "multipart/form-data": {"schema": _FORM, "example": _FORM_EXAMPLE},
        "application/x-www-form-urlencoded": {"schema": _FORM, "example": _FORM_EXAMPLE},
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["CallSid"],
                "properties": {**_FIELDS, "Legs": {"type": "array", "items": _LEG}},
            },
            "example": _EXAMPLE | {"Legs": _LEGS_EXAMPLE},
        },
    },
}
