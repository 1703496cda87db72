"""MicroBatcher: bounded batches, bounded waits, results in order, errors to every waiter."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from services.search_api.batching import MicroBatcher


class Recorder:
    """A real batch function: squares a batch of numbers with numpy and records batch sizes."""

    def __init__(self, delay: float = 0.0):
        self.sizes: list[int] = []
        self.threads: set[str] = set()
        self.delay = delay

    def __call__(self, items: list[int]) -> list[int]:
        self.sizes.append(len(items))
        self.threads.add(threading.current_thread().name)
        if self.delay:
            time.sleep(self.delay)
        return [int(v) for v in np.square(np.asarray(items, dtype=np.int64))]


def test_concurrent_submits_are_batched_within_bounds():
    rec = Recorder(delay=0.02)

    async def main():
        with ThreadPoolExecutor(1, thread_name_prefix="worker") as pool:
            b = MicroBatcher(rec, pool, max_size=4, max_wait_ms=0)
            out = await asyncio.gather(*(b.submit(i) for i in range(10)))
            await b.stop()
            return out

    out = asyncio.run(main())
    assert out == [i * i for i in range(10)]
    assert sum(rec.sizes) == 10
    assert max(rec.sizes) == 4  # bounded, and really batched (10 items in <= 4 calls of <= 4)
    assert len(rec.sizes) <= 4
    assert all(name.startswith("worker") for name in rec.threads)


def test_lone_request_does_not_wait_when_nothing_else_is_in_flight():
    rec = Recorder()

    async def main():
        with ThreadPoolExecutor(1) as pool:
            b = MicroBatcher(rec, pool, max_size=8, max_wait_ms=500, pending_hint=lambda: 1)
            t = time.perf_counter()
            r = await b.submit(3)
            dt = time.perf_counter() - t
            await b.stop()
            return r, dt

    r, dt = asyncio.run(main())
    assert r == 9
    assert dt < 0.4  # the 500 ms wait was skipped: the hint says no companion is coming


def test_waits_for_announced_companions_up_to_the_bound():
    rec = Recorder()

    async def main():
        with ThreadPoolExecutor(1) as pool:
            b = MicroBatcher(rec, pool, max_size=8, max_wait_ms=300, pending_hint=lambda: 3)

            async def late(v, after):
                await asyncio.sleep(after)
                return await b.submit(v)

            out = await asyncio.gather(b.submit(1), late(2, 0.02), late(3, 0.04))
            # a companion is announced but never comes: the wait ends at the bound
            t = time.perf_counter()
            lone = await b.submit(5)
            dt = time.perf_counter() - t
            await b.stop()
            return out, lone, dt

    out, lone, dt = asyncio.run(main())
    assert out == [1, 4, 9]
    assert rec.sizes[0] == 3  # the first item waited for the two announced companions
    assert lone == 25 and 0.25 <= dt < 5


def test_an_error_fails_every_item_of_its_batch_and_the_batcher_goes_on():
    calls = []

    def flaky(items):
        calls.append(list(items))
        if 13 in items:
            raise ValueError("unlucky batch")
        return [v + 1 for v in items]

    async def main():
        with ThreadPoolExecutor(1) as pool:
            b = MicroBatcher(flaky, pool, max_size=2, max_wait_ms=0)
            res = await asyncio.gather(b.submit(13), b.submit(1), return_exceptions=True)
            after = await b.submit(7)
            await b.stop()
            return res, after

    res, after = asyncio.run(main())
    assert isinstance(res[0], ValueError) and isinstance(res[1], ValueError)
    assert after == 8


def test_wrong_result_count_is_an_error():
    async def main():
        with ThreadPoolExecutor(1) as pool:
            b = MicroBatcher(lambda items: [], pool, max_size=2, max_wait_ms=0)
            with pytest.raises(RuntimeError, match="returned 0 results for 1 items"):
                await b.submit(1)
            await b.stop()

    asyncio.run(main())


@pytest.mark.parametrize("kw", [{"max_size": 0}, {"max_wait_ms": -1}, {"workers": 0}])
def test_bad_bounds_are_refused(kw):
    with ThreadPoolExecutor(1) as pool:
        with pytest.raises(ValueError):
            MicroBatcher(lambda x: x, pool, **kw)


def test_two_workers_run_two_batches_at_once_and_lose_nothing():
    """workers=2: a second batch starts while the first still runs; every item gets its own result."""
    active = [0, 0]  # now, peak
    lock = threading.Lock()

    def process(items: list[int]) -> list[int]:
        with lock:
            active[0] += 1
            active[1] = max(active[1], active[0])
        time.sleep(0.05)
        with lock:
            active[0] -= 1
        return [v + 1000 for v in items]

    async def main():
        with ThreadPoolExecutor(2) as pool:
            b = MicroBatcher(process, pool, max_size=3, max_wait_ms=0, workers=2)
            out = await asyncio.gather(*(b.submit(i) for i in range(12)))
            await b.stop()
            return out

    assert asyncio.run(main()) == [i + 1000 for i in range(12)]
    assert active[1] == 2
