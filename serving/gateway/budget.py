"""A bound on the decoded pixels of the requests in flight (the gateway's memory), fair between
clients.

A 333-byte JPEG may declare 39 MP; decoded, mapped back and encoded as an overlay it costs
about 18 bytes a pixel (0.7 GiB; tests/test_reliability.py measures it). Each request holds its
image's pixel count (read from the header, before decoding) from decoding until its answer is
encoded and its threads have ended; a request that does not fit waits, within its deadline, and
then gets 503. Waiters are served in arrival order, and no client (``client_of``) holds more
than ``per_client`` pixels: one client's pixel-hogs can not keep another client's photos out
(security review H2). A client at its share waits without holding up the others.
"""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from .work import RequestWork


class Busy(Exception):
    """No room within the request's deadline (HTTP 503, Retry-After)."""


@dataclass
class _Waiter:
    pixels: int
    client: str
    granted: asyncio.Future = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class PixelBudget:
    def __init__(self, pixels: int, per_client: int | None = None) -> None:
        self.capacity = pixels
        self.per_client = min(per_client or pixels, pixels)
        self.used = 0
        self.by_client: Counter[str] = Counter()
        self._waiting: deque[_Waiter] = deque()

    def _fits(self, pixels: int, client: str) -> bool:
        return (
            self.used + pixels <= self.capacity
            and self.by_client[client] + pixels <= self.per_client
        )

    def _take(self, pixels: int, client: str) -> None:
        self.used += pixels
        self.by_client[client] += pixels

    def _grant(self) -> None:
        """Wake waiters in arrival order: each that fits is granted; one that waits only for
        its own client's share is passed over; the first that waits for the shared capacity
        stops the round (later, smaller ones do not overtake it)."""
        for waiter in list(self._waiting):
            if waiter.granted.done():  # gave up (its deadline)
                self._waiting.remove(waiter)
            elif self._fits(waiter.pixels, waiter.client):
                self._waiting.remove(waiter)
                self._take(waiter.pixels, waiter.client)
                waiter.granted.set_result(None)
            elif self.used + waiter.pixels > self.capacity:
                break

    @asynccontextmanager
    async def hold(
        self, pixels: int, timeout: float, work: RequestWork | None = None, client: str = ""
    ) -> AsyncIterator[None]:
        """``work``: the pixels come back once its threads have ended, not when the request
        is answered (a decode that outlives its deadline still holds what it decodes)."""
        pixels = min(pixels, self.per_client)  # one image alone always fits (max_pixels <= it)
        queued = any(not w.granted.done() for w in self._waiting)
        if not queued and self._fits(pixels, client):
            self._take(pixels, client)
        else:
            waiter = _Waiter(pixels, client)
            self._waiting.append(waiter)
            try:
                await asyncio.wait_for(asyncio.shield(waiter.granted), timeout)
            except TimeoutError:
                if waiter.granted.done():  # granted just as the time ran out: keep it
                    pass
                else:
                    waiter.granted.cancel()
                    self._grant()  # it may have held up smaller waiters behind it
                    raise Busy(
                        f"the server is busy: {self.used} of {self.capacity} decoded pixels are "
                        f"in flight and this image needs {pixels}; retry"
                    ) from None
            except BaseException:  # cancelled (the deadline's fence)
                if waiter.granted.done() and not waiter.granted.cancelled():
                    self._release(pixels, client)
                else:
                    waiter.granted.cancel()
                    self._grant()
                raise

        try:
            yield
        finally:  # synchronous: a cancelled request still gives its pixels back, once its
            # threads are done
            if work is None:
                self._release(pixels, client)
            else:
                work.after(lambda: self._release(pixels, client))

    def _release(self, pixels: int, client: str) -> None:
        self.used -= pixels
        self.by_client[client] -= pixels
        if not self.by_client[client]:
            del self.by_client[client]
        self._grant()
