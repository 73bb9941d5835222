"""What one request may take, enforced as pure ASGI middleware (no route ever sees more):

- ``BodyLimits``: the body's size, counted while it is read (413), and its pace: a body that
  sends nothing for ``body_timeout`` seconds gets 408 and its connection is closed.
- ``Admission``: at most ``max_in_flight`` segment requests at once; one more gets 503 with
  ``Retry-After`` at once, never a queue. Each admitted request gets one ``Deadline`` from its
  arrival to its answer (``request.state.deadline``); every wait inside it (the body, the pixel
  budget, a shared-memory slot, Triton) uses what is left of it. It also gets a ``RequestWork``
  (``request.state.work``, ``serving.gateway.work``): its slot is held until its threads end.

Headers are bounded before any of this runs: ``serving.gateway.protocol``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .metrics import ROUTE_KEY
from .work import RequestWork, Workers

SEGMENT_PATH = "/v1/segment"
WORK_SHARE = 0.25  # of a request's deadline, kept for its work after waiting for room


class Deadline:
    """One time limit for everything a request waits on."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.at = time.monotonic() + seconds

    def remaining(self) -> float:
        return max(0.0, self.at - time.monotonic())

    def to_wait(self) -> float:
        """How long a request may queue for room (the pixel budget): a quarter of the deadline
        stays for the work itself, so that a request let in late is refused (503) rather than
        admitted only to time out in the model (504)."""
        return max(0.0, self.remaining() - WORK_SHARE * self.seconds)


async def answer(send: Send, status: int, code: str, detail: str, headers=()) -> None:
    """A JSON error sent straight from middleware (the app never saw the request)."""
    body = json.dumps({"error": code, "detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


CLOSE = ((b"connection", b"close"),)

# What common proxies accept (nginx 8 KiB a header line, 4 x 8 KiB in all; 8 KiB URLs): a
# client with a 64 KiB header or URL is refused, never parsed into a request.
MAX_URL_BYTES = 8 * 1024
MAX_HEADER_BYTES = 16 * 1024


class HeaderLimits:
    """414 for a URL over ``MAX_URL_BYTES``, 431 for headers over ``MAX_HEADER_BYTES`` in all,
    before anything else looks at the request (the connection is closed)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            url = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
            headers = sum(len(k) + len(v) + 4 for k, v in scope.get("headers", []))
            if url > MAX_URL_BYTES:
                detail = f"the URL is {url} bytes, more than {MAX_URL_BYTES}"
                await answer(send, 414, "uri_too_long", detail, CLOSE)
                return
            if headers > MAX_HEADER_BYTES:
                detail = f"the headers are {headers} bytes, more than {MAX_HEADER_BYTES}"
                await answer(send, 431, "headers_too_large", detail, CLOSE)
                return
        await self.app(scope, receive, send)


class BodyLimits:
    def __init__(self, app: ASGIApp, max_bytes: int, idle_seconds: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.idle_seconds = idle_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", []))
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            # Refused before a byte of the body is read.
            await answer(send, 413, "too_large", self._too_large(), CLOSE)
            return
        received = 0
        started = rejected = complete = False

        async def reject(status: int, code: str, detail: str) -> Message:
            nonlocal rejected
            rejected = True  # the app is told the client is gone: it stops reading
            if not started:
                await answer(send, status, code, detail, CLOSE)
            return {"type": "http.disconnect"}

        async def limited_receive() -> Message:
            nonlocal received, complete
            if rejected:
                return {"type": "http.disconnect"}
            if complete:  # after the body: waiting for a disconnect has no time limit
                return await receive()
            deadline: Deadline | None = scope.get("state", {}).get("deadline")
            wait = self.idle_seconds
            if deadline is not None:
                wait = min(wait, deadline.remaining())
            try:
                message = await asyncio.wait_for(receive(), wait)
            except TimeoutError:
                why = (
                    f"the request body sent nothing for {self.idle_seconds:g} s"
                    if deadline is None or wait == self.idle_seconds
                    else f"the request body was not received within {deadline.seconds:g} s"
                )
                return await reject(408, "body_timeout", why)
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                complete = not message.get("more_body", False)
                if received > self.max_bytes:
                    return await reject(413, "too_large", self._too_large())
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if rejected:
                return  # the 4xx is out; whatever the app says after it is dropped
            started = started or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, limited_receive, guarded_send)

    def _too_large(self) -> str:
        return f"request body is larger than {self.max_bytes} bytes"


class Admission:
    """``in_flight`` counts a request until it is answered and every thread it started has
    ended (``RequestWork``): a request answered 504 while its decode runs on keeps its slot.
    One client (``client_of``) holds at most ``per_client`` of the slots (then 429)."""

    def __init__(
        self,
        app: ASGIApp,
        max_in_flight: int,
        timeout: float,
        workers: Workers,
        per_client: int | None = None,
    ) -> None:
        self.app = app
        self.max_in_flight = max_in_flight
        self.per_client = per_client or max_in_flight
        self.timeout = timeout
        self.workers = workers
        self.in_flight = 0
        self.by_client: Counter[str] = Counter()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != SEGMENT_PATH:
            await self.app(scope, receive, send)  # health, models, the page: never queued
            return
        scope[ROUTE_KEY] = SEGMENT_PATH  # for the metrics, also when refused here
        client = client_of(scope)
        if self.in_flight >= self.max_in_flight:
            detail = f"the server is busy ({self.max_in_flight} requests in flight); retry"
            await answer(send, 503, "overloaded", detail, ((b"retry-after", b"1"),))
            return
        if self.by_client[client] >= self.per_client:
            detail = f"{self.per_client} requests from this client are in flight; retry"
            await answer(send, 429, "too_many_requests", detail, ((b"retry-after", b"1"),))
            return
        deadline = Deadline(self.timeout)
        work = RequestWork(self.workers)
        scope.setdefault("state", {}).update(deadline=deadline, work=work, client=client)
        started = False
        # A last fence: the waits inside answer before it (408, 503, 504 with a reason). It
        # ends when the answer starts: writing it is bounded per write, by the protocol
        # (``protocol.HeaderTimeoutProtocol``: no progress for ``write_timeout``, aborted).
        fence = asyncio.timeout(deadline.seconds + 1.0)

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if not started and message["type"] == "http.response.start":
                started = True
                fence.reschedule(None)
            await send(message)

        self.in_flight += 1
        self.by_client[client] += 1
        work.begin()  # the answer too: what the request holds stays held until it is written
        try:
            async with fence:
                await self.app(scope, receive, tracking_send)
        except TimeoutError:
            if not started:
                detail = f"no answer within the request deadline of {deadline.seconds:g} s"
                await answer(send, 504, "timeout", detail)
        finally:
            work.after(lambda: self._release(client))
            work.end()

    def _release(self, client: str) -> None:
        self.in_flight -= 1
        self.by_client[client] -= 1
        if not self.by_client[client]:
            del self.by_client[client]


def client_of(scope: Scope) -> str:
    """The client's address (as the server saw it, or as a trusted proxy told it): whose share
    of admission, uploads and pixels a request counts against."""
    client = scope.get("client")
    return str(client[0]) if client else "unknown"
