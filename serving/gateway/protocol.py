"""uvicorn's HTTP protocol with time limits on reading headers and on writing answers.

uvicorn bounds idle keep-alive connections but not a client that sends its headers a byte at a
time (or opens a connection and sends nothing): each such connection would stay open for good.
Here a request's headers must be complete within ``header_timeout`` seconds of the connection
opening, or of the previous response on a kept-alive connection; otherwise it is closed.
Bodies are bounded by ``serving.gateway.limits.BodyLimits`` and ``reception.Reception``.

Answers: a client that stops reading kept its answer (an overlay can be 70 MB) in the
process for good, and closing waited for a drain that never came (security review H4). While
the transport's buffer is over its high-water mark, the bytes waiting in it must go down within
``write_timeout`` seconds, every time; when they do not, the connection is aborted (not closed:
closing waits to drain), which frees the buffer and ends the request.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.h11_impl import H11Protocol


class HeaderTimeoutProtocol(H11Protocol):
    header_timeout = 5.0
    write_timeout = 30.0
    _write_timer: asyncio.TimerHandle | None = None
    _write_left = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._header_timer: asyncio.TimerHandle | None = None
        self._waiting_after: object | None = (
            None  # the cycle before the request whose headers we wait for
        )
        super().connection_made(transport)
        self._arm_header_timer()

    def handle_events(self) -> None:
        super().handle_events()
        if self._header_timer is not None and self.cycle is not self._waiting_after:
            self._disarm_header_timer()  # a new request's headers are complete

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_header_timer()  # the next request on this connection

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        self._stop_write_watch()
        super().connection_lost(exc)

    # -- writing: the buffer over its high-water mark must shrink within write_timeout ----------

    def pause_writing(self) -> None:
        super().pause_writing()
        self._write_left = self.transport.get_write_buffer_size()
        self._watch_write()

    def resume_writing(self) -> None:
        self._stop_write_watch()
        super().resume_writing()

    def _watch_write(self) -> None:
        self._stop_write_watch()
        self._write_timer = self.loop.call_later(self.write_timeout, self._write_checked)

    def _stop_write_watch(self) -> None:
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None

    def _write_checked(self) -> None:
        self._write_timer = None
        if self.transport.is_closing():
            return
        left = self.transport.get_write_buffer_size()
        if left < self._write_left:  # the client reads: watch the next stretch
            self._write_left = left
            self._watch_write()
            return
        self.logger.info(
            "aborted a connection: its client read nothing of the answer for %gs "
            "(%d bytes waiting)",
            self.write_timeout,
            left,
        )
        self.transport.abort()

    def _arm_header_timer(self) -> None:
        self._disarm_header_timer()
        self._waiting_after = self.cycle
        self._header_timer = self.loop.call_later(self.header_timeout, self._headers_late)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.logger.info(
                "closed a connection: no complete headers within %gs", self.header_timeout
            )
            self.transport.close()


def with_header_timeout(
    seconds: float, write_timeout: float = HeaderTimeoutProtocol.write_timeout
) -> type[HeaderTimeoutProtocol]:
    """The protocol class for ``uvicorn.Config(http=...)``."""
    limits = {"header_timeout": seconds, "write_timeout": write_timeout}
    return type("HeaderTimeoutProtocol", (HeaderTimeoutProtocol,), limits)
