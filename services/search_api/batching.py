"""Micro-batching of concurrent requests for one worker thread.

Transformer encoders amortise their per-call overhead over a batch: encoding 16 short
queries in one forward pass costs a few times one query, not sixteen. Under concurrent
load the service therefore collects the queries that arrive together and encodes them in
one pass (the "dynamic batching" of Triton / TorchServe). No library does this for a
plain asyncio app without a model server, so this small class is our own.

Policy (both bounds are settings):

* a batch holds at most ``max_size`` items;
* whatever queued up while the worker was busy is taken at once (natural batching);
* the first item of a batch then waits at most ``max_wait_ms`` for companions, and only
  while more are expected: the batch is smaller than the number of requests in flight now
  (``pending_hint()``) or than the peak concurrency of the last few batches (clients of a
  busy service send their next query a moment after getting an answer). At concurrency 1
  both are 1, so a lone request never waits.

Work runs on dedicated threads (``executor``), so the event loop keeps accepting and
parsing requests while the encoder runs. With ``workers=1`` (default) one batch runs at a
time; with ``workers=n`` up to n batches run at once (the executor needs n threads), and the
next batch is only collected once a worker is free, so it still holds everything that
queued meanwhile.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import Executor
from typing import Any, Callable, Generic, Sequence, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class MicroBatcher(Generic[T, R]):
    """Collect items submitted concurrently and process them in batches on a worker thread.

    Args:
        process: called on the worker thread with a list of items; returns one result per
            item (same order). An exception fails every item of that batch.
        executor: where ``process`` runs (a single-thread executor).
        max_size: most items per batch (>= 1).
        max_wait_ms: longest the first item of a batch waits for more items (>= 0).
        pending_hint: optional callable returning how many items are expected soon
            (e.g. search requests in flight); waiting stops as soon as the batch holds
            that many items.
        on_batch: optional callback ``(batch_size, seconds)`` for metrics.
        workers: most batches processed at the same time (>= 1).
    """

    def __init__(
        self,
        process: Callable[[list[T]], Sequence[R]],
        executor: Executor,
        max_size: int = 32,
        max_wait_ms: float = 2.0,
        pending_hint: Callable[[], int] | None = None,
        on_batch: Callable[[int, float], Any] | None = None,
        workers: int = 1,
    ):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if max_size < 1:
            raise ValueError(f"max_size must be >= 1, got {max_size}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        self.process = process
        self.executor = executor
        self.max_size = max_size
        self.max_wait = max_wait_ms / 1000.0
        self.pending_hint = pending_hint
        self.on_batch = on_batch
        self.workers = workers
        self._running: set[asyncio.Task] = set()
        self._recent: list[int] = []  # in-flight counts seen at the last few batch starts
        self._queue: asyncio.Queue[tuple[T, asyncio.Future]] | None = None
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        """Start the collecting task on the running event loop (idempotent)."""
        if self._task is None or self._task.done():
            self._queue = asyncio.Queue()
            self._task = asyncio.get_running_loop().create_task(self._run(), name="micro-batcher")

    async def stop(self) -> None:
        """Stop collecting; items still queued or in a running batch fail with ``RuntimeError``."""
        for t in list(self._running):
            t.cancel()
        for t in list(self._running):
            try:
                await t
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - shutting down
                pass
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self._queue is not None:
            while not self._queue.empty():
                _, fut = self._queue.get_nowait()
                if not fut.done():
                    fut.set_exception(RuntimeError("service shutting down"))

    async def submit(self, item: T) -> R:
        """Queue ``item`` and wait for its result (raises what ``process`` raised)."""
        self.start()
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        assert self._queue is not None
        await self._queue.put((item, fut))
        return await fut

    async def _collect(self) -> list[tuple[T, asyncio.Future]]:
        assert self._queue is not None
        batch = [await self._queue.get()]
        while len(batch) < self.max_size and not self._queue.empty():
            batch.append(self._queue.get_nowait())
        if self.max_wait > 0 and len(batch) < self.max_size and self.pending_hint is not None:
            now = self.pending_hint()
            self._recent = (self._recent + [now])[-8:]
            peak = max(self._recent)
            deadline = time.perf_counter() + self.max_wait
            while len(batch) < self.max_size and max(self.pending_hint(), peak) > len(batch):
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                except (asyncio.TimeoutError, TimeoutError):
                    break
                while len(batch) < self.max_size and not self._queue.empty():
                    batch.append(self._queue.get_nowait())
        return batch

    async def _run(self) -> None:
        sem = asyncio.Semaphore(self.workers)
        try:
            while True:
                await sem.acquire()  # collect only when a worker is free: the batch takes all that queued
                try:
                    batch = await self._collect()
                except BaseException:
                    sem.release()
                    raise
                live = [(it, fut) for it, fut in batch if not fut.cancelled()]
                if not live:
                    sem.release()
                    continue
                task = asyncio.get_running_loop().create_task(self._dispatch(live))
                self._running.add(task)

                def done(t: asyncio.Task) -> None:
                    self._running.discard(t)
                    sem.release()

                task.add_done_callback(done)
        finally:
            for t in list(self._running):
                t.cancel()

    async def _dispatch(self, live: list[tuple[T, asyncio.Future]]) -> None:
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        try:
            results = await loop.run_in_executor(self.executor, self.process, [it for it, _ in live])
            if len(results) != len(live):
                raise RuntimeError(f"batch function returned {len(results)} results for {len(live)} items")
        except asyncio.CancelledError:  # stop() while a batch runs: nobody is left waiting forever
            for _, fut in live:
                if not fut.done():
                    fut.set_exception(RuntimeError("service shutting down"))
            raise
        except Exception as e:  # noqa: BLE001 - forwarded to every waiter of the batch
            for _, fut in live:
                if not fut.done():
                    fut.set_exception(e)
            return
        if self.on_batch is not None:
            self.on_batch(len(live), time.perf_counter() - t0)
        for (_, fut), res in zip(live, results):
            if not fut.done():
                fut.set_result(res)
