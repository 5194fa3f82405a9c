"""A request body limit that costs a request without a body nothing: 413, never a 500.

One pure ASGI layer. A request whose ``Content-Length`` is over the limit is answered 413
before its body is read; a request with a ``Content-Length`` within it is passed on
untouched (the HTTP server delivers no more than it announced); only a chunked body,
whose size is known at its end, is counted as it is read, and answered 413 once it
passes the limit. A request without a body (every GET) is not wrapped at all.

FastAPI's own ``max_body_size`` (newer releases only) wraps every request in three
layers; on ``GET /users/{id}`` that was the largest single cost of users_api over the
raw-driver app (bench/NOTES.md). The answer has the body of every error of the service
(``ErrorBody``: ``detail``, ``code``), which the OpenAPI schema declares for 413.
"""

from __future__ import annotations

import json
from http import HTTPStatus

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["BodyLimit", "BodyTooLarge"]

# The code the library's handler gives an HTTPException(413), so that both ways of
# refusing a body answer alike.
_CODE = HTTPStatus.REQUEST_ENTITY_TOO_LARGE.phrase.lower().replace(" ", "_")


class BodyTooLarge(HTTPException):
    """A chunked request body went past the limit while it was read: 413.

    Raised from the body's ``receive``, inside FastAPI's reading of the body, which
    passes an ``HTTPException`` on to the app's handler (any other error there becomes a
    400).
    """

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"request body over {max_bytes} bytes")


class BodyLimit:
    """Answer 413 to a request body over *max_bytes*; pass every other request on.

    Args:
        app: The ASGI app to wrap.
        max_bytes: The largest request body accepted, in bytes.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        body = json.dumps(
            {"detail": f"request body over {max_bytes} bytes", "code": _CODE}
        ).encode()
        self._answer = body
        self._headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            # The rest of the body may still be on its way: do not read it, end here.
            (b"connection", b"close"),
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check the announced size; count a chunked body; otherwise just pass on."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        chunked = False
        for name, value in scope["headers"]:
            if name == b"content-length":
                if not value.isdigit() or int(value) > self.max_bytes:
                    await self._refuse(send)
                    return
                await self.app(scope, receive, send)  # the server stops at that length
                return
            if name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        if not chunked:
            await self.app(scope, receive, send)  # no body
            return
        await self._counted(scope, receive, send)

    async def _counted(self, scope: Scope, receive: Receive, send: Send) -> None:
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        await self.app(scope, counting_receive, send)

    async def _refuse(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": 413, "headers": self._headers})
        await send({"type": "http.response.body", "body": self._answer})
