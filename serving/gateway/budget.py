"""A bound on the decoded pixels of the requests in flight (the gateway's memory).

A 333-byte JPEG may declare 39 MP; decoded, mapped back and encoded as an overlay it costs
about 18 bytes a pixel (0.7 GiB; tests/test_reliability.py measures it). Each request holds its
image's pixel count (read from the header, before decoding) from decoding until its answer is
encoded; a request that does not fit waits, within its deadline, and then gets 503.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from .work import RequestWork


class Busy(Exception):
    """No room within the request's deadline (HTTP 503, Retry-After)."""


class PixelBudget:
    def __init__(self, pixels: int) -> None:
        self.capacity = pixels
        self.used = 0
        self._released = asyncio.Event()

    @asynccontextmanager
    async def hold(
        self, pixels: int, timeout: float, work: RequestWork | None = None
    ) -> AsyncIterator[None]:
        """``work``: the pixels come back once its threads have ended, not when the request
        is answered (a decode that outlives its deadline still holds what it decodes)."""
        pixels = min(pixels, self.capacity)  # one image alone always fits (max_pixels <= it)
        until = asyncio.get_running_loop().time() + timeout
        while self.used + pixels > self.capacity:  # one event loop: no lock needed
            self._released.clear()
            try:
                await asyncio.wait_for(
                    self._released.wait(), until - asyncio.get_running_loop().time()
                )
            except TimeoutError:
                raise Busy(
                    f"the server is busy: {self.used} of {self.capacity} decoded pixels are in "
                    f"flight and this image needs {pixels}; retry"
                ) from None
        self.used += pixels

        def release() -> None:
            self.used -= pixels
            self._released.set()

        try:
            yield
        finally:  # synchronous: a cancelled request still gives its pixels back, when its
            # threads are done
            if work is None:
                release()
            else:
                work.after(release)
