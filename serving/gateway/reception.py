"""Receiving a segment request's body, bounded on its own, before the request is admitted.

Admission used to count a request from its headers on, so 32 connections sending a byte every
9 s held every slot and everyone else got 503 (security review H1). Here the body is received
whole first, under limits of its own, and only a complete body is admitted (``Admission``):

- at most ``max_receiving`` bodies arrive at once (then 503), ``per_client`` of them from one
  client address (then 429);
- a body must keep up ``min_rate`` bytes a second on average after its first ``grace``
  seconds, send something every ``idle_seconds``, and be complete within ``total_seconds``
  (else 408, the connection closed); it may not exceed ``max_bytes`` (413).

A body that sends slowly therefore costs the sender bandwidth, not the server its slots.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .limits import CLOSE, SEGMENT_PATH, answer, client_of
from .metrics import ROUTE_KEY


class BodyTooSlow(Exception):
    pass


class Reception:
    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        idle_seconds: float,
        total_seconds: float,
        min_rate: float,
        max_receiving: int,
        per_client: int,
        grace: float = 2.0,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.idle_seconds = idle_seconds
        self.total_seconds = total_seconds
        self.min_rate = min_rate
        self.max_receiving = max_receiving
        self.per_client = per_client
        self.grace = grace
        self.receiving = 0
        self.by_client: Counter[str] = Counter()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != SEGMENT_PATH:
            await self.app(scope, receive, send)
            return
        scope[ROUTE_KEY] = SEGMENT_PATH  # for the metrics, also when refused here
        client = client_of(scope)
        if self.receiving >= self.max_receiving:
            detail = f"the server is busy ({self.max_receiving} uploads arriving); retry"
            await answer(send, 503, "overloaded", detail, ((b"retry-after", b"1"),))
            return
        if self.by_client[client] >= self.per_client:
            detail = f"{self.per_client} uploads from this client are still arriving; retry"
            await answer(send, 429, "too_many_uploads", detail, ((b"retry-after", b"1"),))
            return
        self.receiving += 1
        self.by_client[client] += 1
        try:
            body = await self._receive_body(scope, receive, send)
        finally:
            self.receiving -= 1
            self.by_client[client] -= 1
            if not self.by_client[client]:
                del self.by_client[client]
        if body is None:  # refused (408/413), or the client went away
            return
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: a disconnect, whenever it comes

        await self.app(scope, replay, send)

    async def _receive_body(self, scope: Scope, receive: Receive, send: Send) -> bytes | None:
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await answer(send, 413, "too_large", self._too_large(), CLOSE)
            return None
        parts: list[bytes] = []
        received = 0
        started = time.monotonic()
        while True:
            elapsed = time.monotonic() - started
            # The next byte is due by the first of: the idle limit, the total, and the moment
            # the average rate would fall below the minimum (after the grace).
            due = {
                "idle": self.idle_seconds,
                "total": self.total_seconds - elapsed,
                "rate": max(self.grace, received / self.min_rate) - elapsed,
            }
            limit = min(due, key=lambda k: due[k])
            try:
                if due[limit] <= 0:
                    raise TimeoutError
                message = await asyncio.wait_for(receive(), due[limit])
            except TimeoutError:
                await answer(send, 408, *self._late(limit, received, started), CLOSE)
                return None
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            received += len(chunk)
            if received > self.max_bytes:
                await answer(send, 413, "too_large", self._too_large(), CLOSE)
                return None
            parts.append(chunk)
            if not message.get("more_body", False):
                return b"".join(parts)

    def _late(self, limit: str, received: int, started: float) -> tuple[str, str]:
        if limit == "total":
            return "body_timeout", (
                f"the request body was not received within {self.total_seconds:g} s"
            )
        if limit == "idle":
            return "body_timeout", f"the request body sent nothing for {self.idle_seconds:g} s"
        rate = received / max(time.monotonic() - started, 1e-9)
        return "body_too_slow", (
            f"the request body arrived at {rate:.0f} bytes/s, below the minimum of "
            f"{self.min_rate:.0f} bytes/s"
        )

    def _too_large(self) -> str:
        return f"request body is larger than {self.max_bytes} bytes"
