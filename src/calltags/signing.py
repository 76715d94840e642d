"""Signed postbacks: HMAC-SHA256 over the request, with a timestamp against replays.

    X-Calltags-Timestamp: 1764417600                       (Unix seconds)
    X-Calltags-Signature: sha256=HEX(HMAC_SHA256(signing_secret,
                          "{timestamp}\\n{METHOD}\\n{path}\\n{query}\\n" + body))

`path` is the request path as sent (e.g. /data_writing/ct_...), `query` the raw query
string without "?", `body` the raw body bytes (empty for GET). A signature is valid for
CALLTAGS_SIGNATURE_TOLERANCE_SECONDS around the server's clock.
"""

from __future__ import annotations

import hashlib
import hmac

from calltags.errors import ApiError

TIMESTAMP_HEADER = "x-calltags-timestamp"
SIGNATURE_HEADER = "x-calltags-signature"
_SCHEME = "sha256="


def signature(
    secret: bytes, timestamp: str, method: str, path: str, query: str, body: bytes
) -> str:
    message = f"{timestamp}\n{method.upper()}\n{path}\n{query}\n".encode() + body
    return _SCHEME + hmac.new(secret, message, hashlib.sha256).hexdigest()


def _invalid(reason: str) -> ApiError:
    return ApiError("invalid_signature", reason)


def verify(
    secret: bytes,
    *,
    timestamp: str | None,
    presented: str | None,
    method: str,
    path: str,
    query: str,
    body: bytes,
    now: float,
    tolerance: int,
) -> None:
    """ApiError 401 unless `presented` signs this request at a fresh `timestamp`."""
    if not presented or not timestamp:
        raise ApiError(
            "missing_signature",
            f"this key requires signed postbacks: {SIGNATURE_HEADER} and {TIMESTAMP_HEADER}",
        )
    if not timestamp.isdigit() or len(timestamp) > 12:
        raise _invalid(f"{TIMESTAMP_HEADER} must be Unix seconds")
    if abs(now - int(timestamp)) > tolerance:
        raise _invalid(f"{TIMESTAMP_HEADER} is more than {tolerance} s from the server's clock")
    expected = signature(secret, timestamp, method, path, query, body)
    if not hmac.compare_digest(expected.encode(), presented.strip().encode("utf-8", "replace")):
        raise _invalid("the signature does not match the request")
