"""uvicorn HTTP protocol with a request-header deadline (slowloris protection).

uvicorn 0.54 times out only *idle* keep-alive connections (``timeout_keep_alive``, armed after
a response): a client that connects and sends nothing, or sends a request line and then a
header byte every few seconds, holds its connection forever, and enough of them exhaust the
server's file descriptors. The body deadline (``body_timeout_s``,
:mod:`services.search_api.middleware`) only starts once the headers are complete and the app
sees the request. nginx and Apache close such connections (``client_header_timeout``,
``mod_reqtimeout``); uvicorn has no option for it, so this module adds one by subclassing its
protocol class (home-made: no maintained library patches uvicorn's parser for this).

The deadline runs from the connection's first moment (or, on a keep-alive connection, from the
first byte of the next request) until the parser has seen the whole header block. A
connection still without complete headers at the deadline gets ``408 Request Timeout`` with
``Connection: close`` if it sent anything, and is closed. Requests whose headers are complete
are untouched.

``rd serve`` passes :func:`protocol_class` to ``uvicorn.run(http=...)``.
"""

from __future__ import annotations

import asyncio
import logging

logger = logging.getLogger("retrieval_distill.serve")

_BODY = b"request headers not received in time\n"
RESPONSE_408 = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: " + str(len(_BODY)).encode() + b"\r\nconnection: close\r\n\r\n" + _BODY
)


class HeaderDeadlineMixin:
    """Close connections whose request headers do not arrive within ``header_timeout_s``.

    Mixed into uvicorn's ``HttpToolsProtocol`` or ``H11Protocol`` (both keep the current
    request in ``self.cycle``; a new cycle exists once a request's headers are parsed).
    """

    header_timeout_s: float = 10.0

    _header_timer: asyncio.TimerHandle | None = None
    _header_bytes: int = 0

    def _awaiting_headers(self) -> bool:
        cycle = self.cycle
        return cycle is None or cycle.response_complete

    def _arm_header_deadline(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_deadline)

    def _disarm_header_deadline(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        self._header_bytes = 0

    def connection_made(self, transport) -> None:  # noqa: D102
        super().connection_made(transport)
        self._arm_header_deadline()

    def data_received(self, data: bytes) -> None:  # noqa: D102
        waiting = self._awaiting_headers()
        super().data_received(data)
        if self.transport.is_closing():
            self._disarm_header_deadline()
        elif self._awaiting_headers():
            if waiting:
                self._header_bytes += len(data)
            self._arm_header_deadline()  # keeps the first byte's deadline: trickling does not extend it
        else:
            self._disarm_header_deadline()

    def connection_lost(self, exc) -> None:  # noqa: D102
        self._disarm_header_deadline()
        super().connection_lost(exc)

    def _header_deadline(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or not self._awaiting_headers():
            return
        if self._header_bytes:
            logger.info("closing a connection whose request headers took over %g s (%d bytes arrived)",
                        self.header_timeout_s, self._header_bytes)
            self.transport.write(RESPONSE_408)
        self.transport.close()


def protocol_class(header_timeout_s: float, http: str = "auto") -> type:
    """The uvicorn protocol class to pass as ``uvicorn.run(http=...)``.

    Args:
        header_timeout_s: seconds a connection may take to send a request's complete header
            block (from connecting, or from the first byte of a keep-alive request).
        http: ``auto`` (httptools when installed, else h11, as uvicorn chooses), ``httptools``
            or ``h11``.

    Raises:
        ValueError: ``header_timeout_s`` not > 0, or an unknown ``http``.
        ImportError: ``http="httptools"`` without httptools installed.
    """
    if not header_timeout_s > 0:
        raise ValueError(f"header_timeout_s must be > 0, got {header_timeout_s}")
    if http not in ("auto", "httptools", "h11"):
        raise ValueError(f"http must be auto, httptools or h11, got {http!r}")
    base = None
    if http in ("auto", "httptools"):
        try:
            from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as base
        except ImportError:
            if http == "httptools":
                raise
    if base is None:
        from uvicorn.protocols.http.h11_impl import H11Protocol as base
    return type(f"HeaderDeadline{base.__name__}", (HeaderDeadlineMixin, base), {"header_timeout_s": float(header_timeout_s)})
