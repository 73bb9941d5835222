"""Headers every response carries, and the API documentation behind the key when asked.

- ``X-Content-Type-Options: nosniff``: browsers never run an answer as another type.
- ``X-Frame-Options: DENY`` and ``frame-ancestors 'none'``: the page cannot be framed
  (clickjacking).
- ``docs=private`` (the default with ``S4SEG_API_KEY``): /docs, /redoc and /openapi.json need
  the key like every other route; ``docs=off`` removes them (``ServeSettings.docs``).
- With a key, ``POST /v1/segment`` without it is refused here, before its body is received or
  it is admitted (the routes' own check, ``require_api_key``, stays for everything else).
"""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .limits import SEGMENT_PATH, answer

DOC_PATHS = ("/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json")
HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", b"frame-ancestors 'none'"),
    (b"referrer-policy", b"no-referrer"),
)


def key_matches(given: str | None, expected: str) -> bool:
    """Compared in constant time."""
    if not given:
        return False
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


class Hardening:
    def __init__(self, app: ASGIApp, api_key: str | None, private_docs: bool) -> None:
        self.app = app
        self.api_key = api_key
        self.private_docs = private_docs and api_key is not None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                extra = [(n, v) for n, v in HEADERS if n not in present]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        # The key before anything is held: a segment request without it never takes an upload
        # slot or admission (review H1); the docs when private.
        keyed = scope["path"] == SEGMENT_PATH or (self.private_docs and scope["path"] in DOC_PATHS)
        if keyed and self.api_key is not None:
            given = dict(scope.get("headers", [])).get(b"x-api-key", b"").decode("latin-1")
            if not key_matches(given, self.api_key):
                # Connection: close: the body is never read, so the connection can not be reused.
                await answer(
                    with_headers,
                    401,
                    "unauthorized",
                    "missing or wrong X-API-Key",
                    ((b"www-authenticate", b"ApiKey"), (b"connection", b"close")),
                )
                return
        await self.app(scope, receive, with_headers)
