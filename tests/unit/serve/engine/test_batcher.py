"""Micro-batching on one event loop (``engine.batcher``), and its service-time model.

Each test runs its own loop with ``asyncio.run``. Batches are made to wait on events,
not on timers, so what forms which batch does not depend on the machine's speed; the one
test with a timer (``max_wait_s``) holds whatever the loop's delays (see its comment).
"""

from __future__ import annotations

import asyncio

import pytest

from nudgeserve.serve.engine.batcher import MicroBatcher, ServiceModel, predicted_wait_s


class Recorder:
    """A batch function that records its batches and answers ``item * 10``; a batch waits
    for ``gate`` when one is set."""

    def __init__(self) -> None:
        self.batches: list[list] = []
        self.gate: asyncio.Event | None = None
        self.started = asyncio.Event()

    async def __call__(self, items):
        self.batches.append(list(items))
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        return [item * 10 for item in items]


async def settle(turns: int = 5) -> None:
    """Let the loop run a few turns (tasks submit, batches start)."""
    for _ in range(turns):
        await asyncio.sleep(0)


def test_max_batch_size_must_be_positive():
    with pytest.raises(ValueError, match="max_batch_size"):
        MicroBatcher(Recorder(), 0)


def test_calls_in_one_loop_turn_form_one_batch():
    async def main():
        run = Recorder()
        batcher = MicroBatcher(run, max_batch_size=16)
        results = await asyncio.gather(*(batcher.submit(i) for i in range(5)))
        return run.batches, results

    batches, results = asyncio.run(main())
    assert batches == [[0, 1, 2, 3, 4]]
    assert results == [0, 10, 20, 30, 40]


def test_call_arriving_while_a_batch_runs_goes_to_the_next_batch():
    async def main():
        run = Recorder()
        run.gate = asyncio.Event()
        batcher = MicroBatcher(run, max_batch_size=16)
        first = asyncio.create_task(batcher.submit(1))
        await run.started.wait()
        later = [asyncio.create_task(batcher.submit(i)) for i in (2, 3, 4)]
        await settle()
        assert run.batches == [[1]]  # still running the first batch
        assert len(batcher) == 3
        run.gate.set()
        return run.batches, await first, await asyncio.gather(*later)

    batches, first, later = asyncio.run(main())
    assert batches == [[1], [2, 3, 4]]
    assert first == 10
    assert later == [20, 30, 40]


def test_max_batch_size_is_respected_and_results_map_back_in_order():
    async def main():
        run = Recorder()
        batcher = MicroBatcher(run, max_batch_size=2)
        results = await asyncio.gather(*(batcher.submit(i) for i in range(5)))
        return run.batches, results

    batches, results = asyncio.run(main())
    assert batches == [[0, 1], [2, 3], [4]]
    assert results == [i * 10 for i in range(5)]


def test_a_failed_batch_fails_each_of_its_callers_and_the_next_batch_works():
    async def main():
        batches = []
        error = ValueError("model failed")

        async def run(items):
            batches.append(list(items))
            if "bad" in items:
                raise error
            return [f"ok {item}" for item in items]

        batcher = MicroBatcher(run, max_batch_size=16)
        failed = await asyncio.gather(
            *(batcher.submit(item) for item in ("a", "bad", "c")), return_exceptions=True
        )
        after = await asyncio.gather(batcher.submit("d"), batcher.submit("e"))
        return batches, error, failed, after

    batches, error, failed, after = asyncio.run(main())
    assert batches == [["a", "bad", "c"], ["d", "e"]]
    assert all(exc is error for exc in failed)
    assert after == ["ok d", "ok e"]


def test_a_cancelled_caller_is_not_computed():
    async def main():
        run = Recorder()
        run.gate = asyncio.Event()
        batcher = MicroBatcher(run, max_batch_size=16)
        first = asyncio.create_task(batcher.submit(1))
        await run.started.wait()
        # Queued behind the running batch; the second caller gives up before its batch.
        waiting = {i: asyncio.create_task(batcher.submit(i)) for i in (2, 3, 4)}
        await settle()
        waiting[3].cancel()
        await settle()
        run.gate.set()
        await first
        results = await asyncio.gather(waiting[2], waiting[4])
        assert waiting[3].cancelled()
        return run.batches, results

    batches, results = asyncio.run(main())
    assert batches == [[1], [2, 4]]
    assert results == [20, 40]


def test_every_caller_cancelled_skips_the_batch():
    async def main():
        run = Recorder()
        run.gate = asyncio.Event()
        batcher = MicroBatcher(run, max_batch_size=16)
        first = asyncio.create_task(batcher.submit(1))
        await run.started.wait()
        gone = [asyncio.create_task(batcher.submit(i)) for i in (2, 3)]
        await settle()
        for task in gone:
            task.cancel()
        await settle()
        run.gate.set()
        await first
        await settle()
        run.gate = None
        # The batcher is idle again and serves the next call.
        return run.batches, await batcher.submit(5)

    batches, result = asyncio.run(main())
    assert batches == [[1], [5]]
    assert result == 50


def test_wrong_number_of_results_fails_the_batch_with_runtime_error():
    async def main():
        calls = []

        async def run(items):
            calls.append(list(items))
            return [0] * (len(items) - 1) if len(calls) == 1 else list(items)

        batcher = MicroBatcher(run, max_batch_size=16)
        failed = await asyncio.gather(batcher.submit(1), batcher.submit(2), return_exceptions=True)
        return failed, await batcher.submit(3)

    failed, after = asyncio.run(main())
    assert all(isinstance(exc, RuntimeError) for exc in failed)
    assert "batch of 2 returned 1 results" in str(failed[0])
    assert after == 3


@pytest.mark.parametrize("max_wait_s, expected", [(0.1, [[0, 1]]), (0.0, [[0], [1]])])
def test_max_wait_lets_an_idle_batcher_wait_for_batch_mates(max_wait_s, expected):
    # The second call comes 10 ms after the first. With max_wait_s = 0.1 the batch starts
    # 0.1 s after the first call, so both are in it; even a stalled loop that finds both
    # timers due at once runs the earlier one (the sleep) first and the second call is
    # queued before the batch task takes its items. With max_wait_s = 0 the first call's
    # batch has started (and finished) when the second comes.
    async def main():
        run = Recorder()
        batcher = MicroBatcher(run, max_batch_size=16, max_wait_s=max_wait_s)
        first = asyncio.create_task(batcher.submit(0))
        await asyncio.sleep(0.01)
        second = asyncio.create_task(batcher.submit(1))
        assert await asyncio.gather(first, second) == [0, 10]
        return run.batches

    assert asyncio.run(main()) == expected


def test_on_batch_reports_size_queue_waits_and_service_time():
    class Clock:
        t = 100.0

        def __call__(self):
            return self.t

    clock = Clock()
    reports = []

    async def main():
        async def run(items):
            clock.t += 0.25  # the batch takes 0.25 s of the fake clock
            return items

        batcher = MicroBatcher(
            run, max_batch_size=16, on_batch=lambda *args: reports.append(args), clock=clock
        )
        first = asyncio.create_task(batcher.submit("a"))
        await asyncio.sleep(0)  # "a" queued at t = 100.0
        clock.t += 0.5
        second = asyncio.create_task(batcher.submit("b"))  # queued at t = 100.5
        await asyncio.gather(first, second)

    asyncio.run(main())
    assert len(reports) == 1
    size, waits, service = reports[0]
    assert size == 2
    assert waits == pytest.approx([0.5, 0.0])
    assert service == pytest.approx(0.25)


# -- the service-time model ------------------------------------------------------------------


def test_service_model_recovers_a_and_b_from_noiseless_batches():
    # seconds = a + b * n exactly: the weighted least squares fit is exact arithmetic up
    # to rounding, so the recovered coefficients agree to ~1e-9 relative.
    a, b = 0.0012, 0.000035
    model = ServiceModel()
    for n in [1, 4, 16, 2, 64, 8, 32, 3, 128, 5] * 3:
        model.add(n, a + b * n)
    assert model.a == pytest.approx(a, rel=1e-9)
    assert model.b == pytest.approx(b, rel=1e-9)
    assert model.seconds(100) == pytest.approx(a + b * 100, rel=1e-9)


def test_service_model_tracks_a_change_of_cost():
    # Exponential weighting: after enough batches at the new cost the old one is forgotten.
    model = ServiceModel()
    for n in [1, 8, 32] * 20:
        model.add(n, 0.001 + 0.0001 * n)
    for n in [1, 8, 32] * 300:
        model.add(n, 0.002 + 0.0002 * n)
    assert model.a == pytest.approx(0.002, rel=1e-3)
    assert model.b == pytest.approx(0.0002, rel=1e-3)


def test_service_model_with_one_batch_size_charges_everything_per_item():
    model = ServiceModel()
    for _ in range(10):
        model.add(4, 0.002)
    assert model.a == pytest.approx(0.0, abs=1e-12)
    assert model.b == pytest.approx(0.0005, rel=1e-9)


def test_service_model_clamps_negative_slope_and_intercept():
    # Initial guesses near the data, so no observation is bounded as an outlier.
    model = ServiceModel(a=0.01, b=0.0)
    for n in [1, 10] * 5:
        model.add(n, 0.01 - 0.0005 * n)  # bigger batches faster: nonsense, clamped
    assert model.b == 0.0
    assert model.a > 0.0
    model = ServiceModel(a=0.0, b=0.001)
    for n in [10, 1] * 5:
        model.add(n, -0.001 + 0.001 * n)  # negative intercept: clamped to 0
    assert model.a == 0.0
    assert model.b == pytest.approx(0.001, rel=1e-9)


# -- predicted wait --------------------------------------------------------------------------


class FakeClock:
    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_predicted_wait_idle_and_empty_is_zero():
    batcher = MicroBatcher(Recorder(), max_batch_size=8, clock=FakeClock())
    batcher.model.a, batcher.model.b = 0.0005, 0.00002
    # Nothing running, nothing queued: a new call's batch starts at once (its own service
    # time is not a wait that shedding could avoid).
    assert batcher.predicted_wait_s() == 0.0
    assert predicted_wait_s([]) == 0.0


def test_predicted_wait_counts_the_running_batch_and_full_batches_ahead():
    clock = FakeClock(10.0)

    async def main():
        run = Recorder()
        run.gate = asyncio.Event()
        batcher = MicroBatcher(run, max_batch_size=4, clock=clock)
        model = batcher.model
        model.a, model.b = 0.01, 0.001
        first = asyncio.create_task(batcher.submit(0))
        await run.started.wait()
        # The running batch of one is predicted to end at 10.0 + seconds(1) = 10.011.
        remaining = model.seconds(1)
        assert batcher.predicted_wait_s() == pytest.approx(remaining)
        waits = []
        tasks = []
        for i in range(1, 10):
            tasks.append(asyncio.create_task(batcher.submit(i)))
            await settle(1)
            waits.append(batcher.predicted_wait_s())
        assert len(batcher) == 9
        # Queued 1..3: a new call joins the forming batch; 4..7: one full batch ahead;
        # 8, 9: two.
        assert waits[:3] == pytest.approx([remaining] * 3)
        assert waits[3:7] == pytest.approx([remaining + model.seconds(4)] * 4)
        assert waits[7:] == pytest.approx([remaining + 2 * model.seconds(4)] * 2)
        # Time passes while the batch runs: the rest of it shrinks, then stays at 0.
        clock.t += 0.006
        assert batcher.predicted_wait_s() == pytest.approx(waits[-1] - 0.006)
        clock.t += 1.0
        assert batcher.predicted_wait_s() == pytest.approx(2 * model.seconds(4))
        run.gate.set()
        await asyncio.gather(first, *tasks)
        return batcher

    batcher = asyncio.run(main())
    assert len(batcher) == 0
    assert batcher.predicted_wait_s() == 0.0


def test_predicted_wait_with_free_slots_is_only_the_full_batches_ahead():
    """concurrency > 1 (batches that are calls to other processes): a new call waits for
    a slot only when every slot is busy, and full batches ahead share the slots."""
    clock = FakeClock(5.0)

    async def main():
        run = Recorder()
        run.gate = asyncio.Event()
        batcher = MicroBatcher(run, max_batch_size=2, concurrency=2, clock=clock)
        model = batcher.model
        model.a, model.b = 0.01, 0.0
        first = asyncio.create_task(batcher.submit(0))
        await settle()
        # One batch running, one slot free: a new call would start at once.
        assert len(run.batches) == 1 and batcher.predicted_wait_s() == 0.0
        second = [asyncio.create_task(batcher.submit(i)) for i in (1, 2)]
        await settle()
        assert len(run.batches) == 2  # both slots busy now
        clock.t += 0.004
        assert batcher.predicted_wait_s() == pytest.approx(0.006)  # the earliest end
        queued = [asyncio.create_task(batcher.submit(i)) for i in range(3, 8)]
        await settle()
        # Five waiting: two full batches ahead, two slots: one batch time more.
        assert len(batcher) == 5
        assert batcher.predicted_wait_s() == pytest.approx(0.006 + 2 * 0.01 / 2)
        assert not batcher.idle
        run.gate.set()
        await asyncio.gather(first, *second, *queued)
        await settle()
        assert batcher.idle and batcher.predicted_wait_s() == 0.0

    asyncio.run(main())


def test_service_model_bounds_one_outlier():
    model = ServiceModel(a=0.001, b=0.0)
    model.add(1, 5.0)  # a 5 s pause: counted as at most 4x the prediction
    assert model.seconds(1) < 0.005


def test_predicted_wait_of_several_batchers_is_the_worst():
    class Fixed:
        def __init__(self, w):
            self.w = w

        def predicted_wait_s(self):
            return self.w

    assert predicted_wait_s([Fixed(0.1), Fixed(0.3), Fixed(0.2)]) == 0.3
    assert predicted_wait_s([Fixed(float("inf"))]) == 0.0  # a broken model admits
