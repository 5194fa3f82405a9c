"""The token that protects ``/metrics`` and the ``/pool`` dashboard (``DB_METRICS_TOKEN``).

Two spellings carry the token, both compared in constant time:

* ``Authorization: Bearer <token>``: what Prometheus sends with
  ``authorization: {credentials: <token>}`` in a scrape config;
* ``Authorization: Basic base64(<any user>:<token>)``: what a browser sends after it
  asked for a password. A page cannot make a browser add a Bearer header to its own
  navigation, so the dashboard answers 401 with a Basic challenge and the browser
  prompts; the page's later ``fetch`` calls reuse the same credentials.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Callable

from fastapi import HTTPException, status
from pydantic import SecretStr
from starlette.requests import Request

__all__ = ["TokenCheck", "token_check"]

TokenCheck = Callable[[Request], None]


def presented_token(authorization: str | None) -> str | None:
    """Return the token carried by an ``Authorization`` header value, if any."""
    if not authorization:
        return None
    scheme, _, credentials = authorization.strip().partition(" ")
    credentials = credentials.strip()
    if scheme.lower() == "bearer":
        return credentials or None
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        _, colon, password = decoded.partition(":")
        return password if colon else None
    return None


def token_matches(expected: SecretStr, authorization: str | None) -> bool:
    """True when *authorization* carries *expected*; constant time in the token's content."""
    given = presented_token(authorization)
    if given is None:
        return False
    return hmac.compare_digest(given.encode(), expected.get_secret_value().encode())


def token_check(token: SecretStr | None, *, challenge: str) -> TokenCheck:
    """Build a FastAPI dependency that answers 401 unless the request carries *token*.

    Args:
        token: The expected token; ``None`` lets every request through.
        challenge: The ``WWW-Authenticate`` value sent with the 401, e.g. ``Bearer``
            for a scraper or ``Basic realm="..."`` to make a browser ask for it.
    """

    def check(request: Request) -> None:
        if token is None:
            return
        if not token_matches(token, request.headers.get("authorization")):
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                "a valid token is required (DB_METRICS_TOKEN)",
                headers={"WWW-Authenticate": challenge},
            )

    return check
