"""Exotel's encodings: numbers in national form, JSON or XML answers, error bodies, and
status callbacks as multipart (Exotel's default) or JSON."""

from __future__ import annotations

import json
import secrets
from typing import Any
from xml.etree import ElementTree

import phonenumbers
from starlette.responses import JSONResponse, Response

from app.exotel.simulator.scenarios import Refusal

DEFAULT_REGION = "IN"


def national(number: str) -> str:
    """A number as Exotel echoes it: national form with its leading 0 (`09876543210`).

    Exotel's samples show every number this way (`0XXXXX38847`); one that cannot be
    read as a phone number is echoed as sent.
    """
    try:
        parsed = phonenumbers.parse(number, DEFAULT_REGION)
    except phonenumbers.NumberParseException:
        return number
    formatted = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.NATIONAL)
    digits = "".join(character for character in formatted if character.isdigit())
    if phonenumbers.region_code_for_number(parsed) == DEFAULT_REGION and not digits.startswith("0"):
        digits = "0" + digits
    return digits


def same_number(left: str, right: str) -> bool:
    """Whether two spellings (E.164, national) name the same number."""
    return national(left) == national(right)


def xml_answer(root_name: str, fields: dict[str, Any], *, status_code: int = 200) -> Response:
    """`<TwilioResponse><Call>...</Call></TwilioResponse>`, empty elements for absent values."""
    document = ElementTree.Element("TwilioResponse")
    element = ElementTree.SubElement(document, root_name)
    for name, value in fields.items():
        child = ElementTree.SubElement(element, name)
        if value is not None:
            child.text = str(value)
    body = ElementTree.tostring(document, encoding="unicode")
    return Response(
        f'<?xml version="1.0" encoding="UTF-8"?>\n{body}',
        status_code=status_code,
        media_type="application/xml",
    )


def answer(
    root_name: str, fields: dict[str, Any], *, as_json: bool, status_code: int = 200
) -> Response:
    if as_json:
        return JSONResponse({root_name: fields}, status_code=status_code)
    return xml_answer(root_name, fields, status_code=status_code)


def rest_exception(refusal: Refusal, *, as_json: bool = True) -> Response:
    """Exotel's error body. `Code` is left out where Exotel leaves it out (DND, 401)."""
    fields: dict[str, Any] = {"Status": refusal.status, "Message": refusal.message}
    if refusal.code is not None:
        fields["Code"] = refusal.code
    response = answer("RestException", fields, as_json=as_json, status_code=refusal.status)
    if refusal.retry_after_s is not None:
        response.headers["Retry-After"] = str(refusal.retry_after_s)
    return response


def bad_request(message: str) -> Response:
    return rest_exception(Refusal(400, message))


def not_found(message: str) -> Response:
    return rest_exception(Refusal(404, message))


def json_callback(payload: dict[str, Any]) -> tuple[bytes, str]:
    return json.dumps(payload).encode(), "application/json"


def multipart_callback(payload: dict[str, Any]) -> tuple[bytes, str]:
    """Exotel's default callback encoding: legs flattened as `Legs[0][Status]`, absent as ""."""
    fields: list[tuple[str, str]] = []
    for name, value in payload.items():
        if name == "Legs":
            for index, leg in enumerate(value):
                fields.extend(
                    (f"Legs[{index}][{key}]", _form_value(item)) for key, item in leg.items()
                )
        else:
            fields.append((name, _form_value(value)))
    boundary = secrets.token_hex(16)
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
        for name, value in fields
    ]
    body = "".join(parts) + f"--{boundary}--\r\n"
    return body.encode(), f"multipart/form-data; boundary={boundary}"


def _form_value(value: Any) -> str:
    return "" if value is None else str(value)


def masked(number: str) -> str:
    return "*" * max(len(number) - 4, 0) + number[-4:]
