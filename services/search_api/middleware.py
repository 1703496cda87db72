"""ASGI middleware: body size and time limits, metrics and in-flight counting in one pass.

Written as plain ASGI (not Starlette's ``BaseHTTPMiddleware``) to keep per-request
overhead to a few microseconds on the hot path.

* A request body over ``max_body_bytes`` answers 413 before the app sees it, whether the
  client declared a ``Content-Length`` or streamed it chunked; a malformed
  ``Content-Length`` answers 400, and so does a body that is not UTF-8 (JSON must be,
  RFC 8259 section 8.1).
* The whole body must arrive within ``body_timeout_s`` of the request reaching the app
  (one deadline for the body, not per chunk, so a byte now and then does not extend it);
  otherwise 408 with ``Connection: close``. uvicorn itself only times out idle keep-alive
  connections, never a body that stops half-way.
* Every HTTP response is counted and timed by endpoint, mode (the handler writes
  ``scope["rd_mode"]``) and status.
* Search requests in flight are counted from the moment their body is complete (a client
  still sending one is not a query the micro-batcher can expect), so the micro-batcher knows
  when waiting for companions is worthwhile.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, Callable

from services.search_api.metrics import ServiceMetrics

SEARCH_PATHS = frozenset(["/search"])


class InFlight:
    """A counter of search requests that have arrived and not yet got their hits."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self) -> int:
        return self.n


def release_inflight(scope: dict, inflight: InFlight) -> None:
    """Mark this request's search as done (idempotent); called by the handler once it has hits."""
    if scope.get("rd_inflight"):
        scope["rd_inflight"] = False
        inflight.n -= 1


async def _send_json(send: Callable, status: int, payload: dict[str, Any], close: bool = False) -> None:
    body = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if close:  # uvicorn closes the connection after a response that says so
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class ServiceMiddleware:
    """Wrap the FastAPI app (see module docstring)."""

    def __init__(
        self, app: Callable, metrics: ServiceMetrics, inflight: InFlight, max_body_bytes: int, body_timeout_s: float = 5.0
    ):
        if body_timeout_s <= 0:
            raise ValueError(f"body_timeout_s must be > 0, got {body_timeout_s}")
        self.app = app
        self.metrics = metrics
        self.inflight = inflight
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        path = scope.get("path", "")
        status_box = [500]

        async def send_wrapper(message: dict) -> None:
            if message["type"] == "http.response.start":
                status_box[0] = int(message["status"])
            await send(message)

        try:
            if scope.get("method") in ("POST", "PUT", "PATCH"):
                checked = await self._limit_body(scope, receive, send_wrapper)
                if checked is None:
                    return
                receive = checked
            if path in SEARCH_PATHS:  # counted once its body is complete: only then can it join a batch
                scope["rd_inflight"] = True
                self.inflight.n += 1
            await self.app(scope, receive, send_wrapper)
        finally:
            release_inflight(scope, self.inflight)
            self.metrics.observe(path, scope.get("rd_mode", ""), status_box[0], started)

    async def _limit_body(self, scope: dict, receive: Callable, send: Callable) -> Callable | None:
        """Read the whole body (at most the limit, within the deadline); answer 413/400/408 and
        return ``None`` if refused. A refusal before the body was read says ``Connection: close``
        (as nginx does for 413): the unread rest of the body must not be parsed as the
        connection's next request."""
        limit = self.max_body_bytes
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                    if declared < 0:
                        raise ValueError
                except ValueError:
                    await _send_json(send, 400, {"detail": "malformed Content-Length header"}, close=True)
                    return None
                if declared > limit:
                    await _send_json(send, 413, {"detail": f"request body of {declared} bytes exceeds the limit of {limit} bytes"},
                                     close=True)
                    return None
        chunks: list[bytes] = []
        size = 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_timeout_s
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                await _send_json(
                    send, 408,
                    {"detail": f"request body not received within {self.body_timeout_s:g} s ({size} bytes arrived)"},
                    close=True,
                )
                return None
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await _send_json(send, 413, {"detail": f"request body exceeds the limit of {limit} bytes"}, close=True)
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as e:
            await _send_json(send, 400, {"detail": f"request body is not valid UTF-8 (byte {e.start}: {e.reason})"})
            return None
        sent = False

        async def replay() -> dict:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return replay
