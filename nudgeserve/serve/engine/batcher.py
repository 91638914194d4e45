"""Micro-batching on one event loop, with no timer: batches form from what is waiting.

A call made while no batch runs starts one at the next turn of the loop, so every call
made in the same turn (all requests parsed from one read of the sockets) joins it; calls
made while a batch runs wait and form the next one, up to ``max_batch_size``. At low load
a request waits for no one (no ``batch_wait_timeout``: that wait is pure latency on a
model that takes a millisecond); under load batches grow by themselves, which is what
keeps throughput up. The batch function must keep the batch invariant (a row's answer
does not depend on its batch-mates; ``engine.batch_engine``).

The batcher also predicts how long a new call would wait before its batch starts: the
rest of the running batch plus the full batches queued ahead of it, from a service-time model
``a + b * n`` fitted online (exponentially weighted least squares over recent batches).
Admission control (``http.admission``) refuses a request whose predicted wait exceeds the
latency budget, so accepted requests keep a bounded latency under any offered load.

No HTTP, no Ray.
"""

from __future__ import annotations

import asyncio
import collections
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

# Weight of the newest batch in the service-time model (about the last 50 batches count).
_DECAY = 0.02


class ServiceModel:
    """``seconds(n) = a + b * n`` fitted by exponentially weighted least squares."""

    __slots__ = ("_sw", "_sn", "_st", "_snn", "_snt", "a", "b")

    def __init__(self, a: float = 0.0005, b: float = 0.00002) -> None:
        self._sw = 0.0
        self._sn = self._st = self._snn = self._snt = 0.0
        self.a, self.b = a, b

    def add(self, n: int, seconds: float) -> None:
        # One outlier (a first call that creates an actor, a pause of the process) must
        # not make every later prediction huge: an observation counts at most 4x the
        # current prediction (a real change of cost is still followed, 4x per batch).
        seconds = min(seconds, max(4.0 * self.seconds(n), 0.001))
        d = 1.0 - _DECAY
        self._sw = self._sw * d + 1.0
        self._sn = self._sn * d + n
        self._st = self._st * d + seconds
        self._snn = self._snn * d + n * n
        self._snt = self._snt * d + n * seconds
        mean_n = self._sn / self._sw
        mean_t = self._st / self._sw
        var_n = self._snn / self._sw - mean_n * mean_n
        if var_n > 1e-9:
            b = (self._snt / self._sw - mean_n * mean_t) / var_n
            b = max(b, 0.0)
        else:  # every recent batch had the same size: all of it is per-item cost
            b = mean_t / max(mean_n, 1.0)
        self.b = b
        self.a = max(mean_t - b * mean_n, 0.0)

    def seconds(self, n: int) -> float:
        return self.a + self.b * n


class MicroBatcher(Generic[T, R]):
    """Coalesces ``submit`` calls into calls of ``run_batch(items) -> results`` (one result
    per item, in order). A failed batch fails each of its calls with the batch's error.

    max_wait_s: how long an idle batcher waits for batch-mates before it starts a batch
    (0: the next turn of the loop; calls arriving while a batch runs never wait for a
    timer). concurrency: batches run at once (1 for work on this loop; more for a batch
    that is a call to other processes, e.g. model replicas behind a handle). on_batch: called after each batch with (size, queue waits in seconds,
    service seconds) for metrics.
    """

    def __init__(
        self,
        run_batch: Callable[[list[T]], Awaitable[list[R]]],
        max_batch_size: int,
        *,
        max_wait_s: float = 0.0,
        concurrency: int = 1,
        on_batch: Callable[[int, list[float], float], None] | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        self.concurrency = concurrency
        self._slots = asyncio.Semaphore(concurrency)
        self.model = ServiceModel()
        self._queue: collections.deque[tuple[T, asyncio.Future, float]] = collections.deque()
        self._running = False
        # Predicted ends (clock seconds) of the batches running now, at most ``concurrency``.
        self._ends: list[float] = []
        self._on_batch = on_batch
        self._clock = clock

    def __len__(self) -> int:
        """Calls waiting for a batch (not counting the running one)."""
        return len(self._queue)

    @property
    def idle(self) -> bool:
        """No batch is running and no call waits for one."""
        return not self._running and not self._queue and not self._ends

    def predicted_wait_s(self) -> float:
        """How long a call made now would wait before its batch starts (seconds,
        predicted): until a batch slot is free (the earliest end among the running
        batches when all ``concurrency`` slots are busy, else none) plus the full batches
        queued ahead of it, ``concurrency`` of them at a time. Its own batch's service
        time is not counted: shedding cannot shorten it."""
        ends = self._ends
        remaining = 0.0
        if len(ends) >= self.concurrency:
            remaining = max(min(ends) - self._clock(), 0.0)
        full = len(self._queue) // self.max_batch_size
        return remaining + full * self.model.seconds(self.max_batch_size) / self.concurrency

    async def submit(self, item: T) -> R:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.append((item, future, self._clock()))
        if not self._running:
            self._running = True
            if self.max_wait_s > 0:
                loop.call_later(self.max_wait_s, self._start, loop)
            else:
                loop.call_soon(self._start, loop)
        return await future

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.create_task(self._drain())

    async def _drain(self) -> None:
        try:
            while self._queue:
                if self.concurrency > 1:
                    # Wait for a slot first: the calls stay queued (and counted by
                    # ``predicted_wait_s``) until a batch can start, and it takes all that
                    # arrived meanwhile.
                    await self._slots.acquire()
                batch: list[tuple[T, asyncio.Future, float]] = []
                while self._queue and len(batch) < self.max_batch_size:
                    entry = self._queue.popleft()
                    if not entry[1].done():  # a caller that gave up is not computed
                        batch.append(entry)
                if self.concurrency == 1:
                    if batch:
                        await self._run(batch)
                    continue
                if not batch:
                    self._slots.release()
                    continue
                asyncio.get_running_loop().create_task(self._run_and_release(batch))
        finally:
            self._running = False

    async def _run_and_release(self, batch: list[tuple[T, asyncio.Future, float]]) -> None:
        try:
            await self._run(batch)
        finally:
            self._slots.release()

    async def _run(self, batch: list[tuple[T, asyncio.Future, float]]) -> None:
        start = self._clock()
        predicted_end = start + self.model.seconds(len(batch))
        self._ends.append(predicted_end)
        items = [entry[0] for entry in batch]
        try:
            results = await self.run_batch(items)
            if len(results) != len(batch):
                raise RuntimeError(f"batch of {len(batch)} returned {len(results)} results")
        except Exception as exc:
            for _, future, _ in batch:
                if not future.done():
                    future.set_exception(exc)
        else:
            for (_, future, _), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)
        finally:
            self._ends.remove(predicted_end)
        end = self._clock()
        self.model.add(len(batch), end - start)
        if self._on_batch is not None:
            self._on_batch(len(batch), [start - entry[2] for entry in batch], end - start)


def predicted_wait_s(batchers: list[Any]) -> float:
    """The longest predicted wait among ``batchers`` (0 for none)."""
    worst = 0.0
    for b in batchers:
        w = b.predicted_wait_s()
        if w > worst:
            worst = w
    return worst if math.isfinite(worst) else 0.0
