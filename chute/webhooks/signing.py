"""Standard Webhooks signatures, made by the `standardwebhooks` package.

A delivery carries `webhook-id` (the event's, the same on every retry),
`webhook-timestamp` (this attempt's, in Unix seconds) and `webhook-signature`: one
`v1,<base64 HMAC-SHA256>` per secret, space-separated, so during a rotation a receiver
holding either the old or the new secret verifies it.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Iterable
from datetime import datetime

from standardwebhooks import Webhook

SECRET_BYTES = 32


def new_secret() -> str:
    """A fresh secret in the `whsec_<base64>` form receivers paste into their verifier."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def signed_headers(msg_id: str, body: str, keys: Iterable[str], now: datetime) -> dict[str, str]:
    """The Standard Webhooks headers of `body`, signed with each of `keys`."""
    signatures = " ".join(Webhook(key).sign(msg_id, now, body) for key in keys)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": signatures,
    }
