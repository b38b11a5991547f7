"""Per-call tokens for the StatusCallback URL: Exotel signs nothing, so the URL is the secret.

A token is `<call id>.<HMAC-SHA256(CALLBACK_SECRET, call id)>`: it names one call and
cannot be forged or moved to another call without the secret.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid


class CallbackTokens:
    def __init__(self, secret: str) -> None:
        self._key = secret.encode()

    def _signature(self, call_id: uuid.UUID) -> str:
        return hmac.new(self._key, call_id.hex.encode(), hashlib.sha256).hexdigest()

    def for_call(self, call_id: uuid.UUID) -> str:
        return f"{call_id.hex}.{self._signature(call_id)}"

    def verify(self, token: str) -> uuid.UUID | None:
        """The call the token was made for, or None if it is malformed or forged."""
        call_hex, _, signature = token.partition(".")
        try:
            call_id = uuid.UUID(hex=call_hex)
        except ValueError:
            return None
        if not hmac.compare_digest(signature.encode(), self._signature(call_id).encode()):
            return None
        return call_id
