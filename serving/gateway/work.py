"""A request's work in threads, and what it holds until that work really ends.

Decoding, framing, mapping back and encoding run in a few worker threads (as many as there are
cores: the default pool of 40 would run 40 decodes at once). A thread can not be stopped, so
when a request's deadline passes (504) its thread runs on: a request that let go of its
admission slot, its pixels and its worker token at that moment left a thread behind that no
bound counted, and a flood of slow decodes grew threads, CPU and memory without limit
(security review C1). Here each admitted request has a ``RequestWork``: every thread it starts
is counted, the worker token comes back when the thread ends, and whatever the request holds
(its admission slot, its pixels) is given back ``after`` the last of its threads has ended, not
when the request is answered. So at most as many threads run as there are tokens, and a request
that timed out still counts against admission and the pixel budget while its work runs.
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")

THREADS = max(2, os.cpu_count() or 1)


class Workers:
    """The gateway's worker threads, and one token per thread (a request waits for a token,
    cancellably; a token is held by the thread, not by the request)."""

    def __init__(self, threads: int = THREADS) -> None:
        self.threads = threads
        self.executor = ThreadPoolExecutor(threads, thread_name_prefix="s4seg-worker")
        self.tokens = asyncio.Semaphore(threads)
        self.busy = 0  # threads running a request's work now

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


class RequestWork:
    """What one request runs in threads; ``after(release)`` runs ``release`` once none runs."""

    def __init__(self, workers: Workers) -> None:
        self.workers = workers
        self.running = 0
        self._after: list[Callable[[], None]] = []

    async def run(self, function: Callable[..., T], *args: Any) -> T:
        """``function(*args)`` in a worker thread. Cancelling the caller (the deadline) stops
        the wait, not the thread: it keeps its token and the request's holds until it ends."""
        workers = self.workers
        await workers.tokens.acquire()
        loop = asyncio.get_running_loop()
        try:
            future = loop.run_in_executor(workers.executor, functools.partial(function, *args))
        except BaseException:
            workers.tokens.release()
            raise
        self.begin()
        workers.busy += 1
        future.add_done_callback(self._ended)
        return await asyncio.shield(future)

    def _ended(self, future: asyncio.Future) -> None:  # on the event loop
        if not future.cancelled():
            future.exception()  # retrieved: a timed-out request's error is not logged as lost
        self.workers.busy -= 1
        self.workers.tokens.release()
        self.end()

    def begin(self) -> None:
        """Work that is not a thread: the request's answer, until its last byte is written
        (``Admission``), so that its pixels are held while a large answer goes out."""
        self.running += 1

    def end(self) -> None:
        self.running -= 1
        if self.running == 0:
            callbacks, self._after = self._after, []
            for callback in callbacks:
                callback()

    def after(self, release: Callable[[], None]) -> None:
        """``release()`` now if no thread of this request runs, else when the last one ends."""
        if self.running == 0:
            release()
        else:
            self._after.append(release)
