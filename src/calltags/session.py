"""The console's sign-in session, and the CSRF token bound to it.

Signing in with the admin token sets a session cookie (Secure, HttpOnly,
SameSite=Strict, path / so that it reaches /console and /admin) holding an expiry, a
nonce and an HMAC keyed from the admin token, never the token: changing
CALLTAGS_ADMIN_TOKEN ends every session. Every state-changing form of the console
carries the session's CSRF token (an HMAC of the cookie's value), and a console page may
call the admin JSON API with the cookie when it sends that token in `X-CSRF-Token`. The
admin Bearer token works without either: a browser never sends it on its own.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response

from calltags.errors import ApiError
from calltags.http import check_bearer
from calltags.services import Services

SESSION_COOKIE = "calltags_session"
SESSION_SECONDS = 12 * 3600  # 12 h
COOKIE_PATH = "/"  # the console (/console) and the admin API (/admin) alike
CSRF_FIELD = "csrf_token"  # the hidden field of every state-changing form
CSRF_HEADER = "X-CSRF-Token"  # the same token, for the admin API called from a page


def _session_key(token: str) -> bytes:
    return hmac.new(token.encode(), b"calltags log page session", hashlib.sha256).digest()


def _sign(token: str, purpose: bytes, value: str) -> str:
    return hmac.new(_session_key(token), purpose + value.encode(), hashlib.sha256).hexdigest()


def new_session(token: str, now: float | None = None) -> str:
    """`expires.nonce.signature`: valid until `expires`, for this admin token only."""
    expires = int(time.time() if now is None else now) + SESSION_SECONDS
    payload = f"{expires}.{secrets.token_urlsafe(12)}"
    return f"{payload}.{_sign(token, b'', payload)}"


def valid_session(token: str, value: str, now: float | None = None) -> bool:
    payload, _, signature = value.rpartition(".")
    expires, _, _ = payload.partition(".")
    if not hmac.compare_digest(signature.encode(), _sign(token, b"", payload).encode()):
        return False
    return expires.isdigit() and int(expires) > (time.time() if now is None else now)


def csrf_token(token: str, session: str) -> str:
    """The CSRF token of one session: only this session's pages know it."""
    return _sign(token, b"csrf ", session)


@dataclass(frozen=True)
class Viewer:
    """Who is signed in: a session (whose forms must carry `csrf`) or a client with the
    admin Bearer token (`csrf` empty: no browser sends that token by itself)."""

    csrf: str

    def accepts(self, presented: str | None) -> bool:
        """A form or call of this viewer's carrying `presented` may change things."""
        if not self.csrf:
            return True
        return presented is not None and hmac.compare_digest(
            presented.encode("utf-8", "surrogatepass"), self.csrf.encode()
        )


def viewer(request: Request, svc: Services) -> Viewer | None:
    """Who signed in: the Authorization header decides when there is one (a wrong token
    is nobody), else the session cookie; None: nobody."""
    token = svc.admin_token()
    if token is None:
        return None
    header = request.headers.get("authorization")
    if header is not None:
        try:
            check_bearer(header, (token,))
        except ApiError:
            return None
        return Viewer(csrf="")
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie is None or not valid_session(token, cookie):
        return None
    return Viewer(csrf=csrf_token(token, cookie))


def from_console(request: Request, svc: Services) -> bool:
    """An admin API call from a console page: no Authorization header, a valid session
    cookie and its CSRF token in X-CSRF-Token."""
    if "authorization" in request.headers:
        return False
    found = viewer(request, svc)
    return found is not None and found.accepts(request.headers.get(CSRF_HEADER))


def sign_in(response: Response, token: str) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        new_session(token),
        max_age=SESSION_SECONDS,
        path=COOKIE_PATH,
        secure=True,
        httponly=True,
        samesite="strict",
    )


def sign_out(response: Response) -> None:
    response.delete_cookie(
        SESSION_COOKIE, path=COOKIE_PATH, secure=True, httponly=True, samesite="strict"
    )
