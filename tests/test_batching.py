"""MicroBatcher driven without Flask; the backend is held on an Event so batches are exact."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from service.batching import BatchJob, CostModel, MicroBatcher, allowed_batch_sizes
from service.errors import ModelCallFailed, QueueFull, ShuttingDown
from tests.fakes import FakeBackend, expected_probabilities


def _rows(rng: np.random.Generator, count: int) -> np.ndarray:
    return rng.uniform(0, 4000, size=(count, 4, 5, 1)).astype(np.float32)


def _batcher(backend: FakeBackend, **kwargs: object) -> MicroBatcher:
    options: dict[str, object] = {"max_batch_size": 8, "max_batch_delay_s": 0.05, "max_queue_size": 64}
    options.update(kwargs)
    return MicroBatcher(backend.predict, **options)  # type: ignore[arg-type]


def _occupied(rng: np.random.Generator, rows: int, **kwargs: object) -> tuple[
        threading.Event, FakeBackend, MicroBatcher, BatchJob]:
    """A batcher whose model is busy with a first request of `rows` images, held on a gate."""
    gate = threading.Event()
    backend = FakeBackend(gate=gate)
    batcher = _batcher(backend, **kwargs)
    running = batcher.submit(_rows(rng, rows))
    assert backend.started.wait(2)
    return gate, backend, batcher, running


def test_concurrent_submissions_make_one_batch(rng: np.random.Generator) -> None:
    gate = threading.Event()
    backend = FakeBackend(gate=gate)
    batcher = _batcher(backend, max_batch_delay_s=1.0)
    # The first request occupies the model; the next four queue behind it and merge.
    first = batcher.submit(_rows(rng, 1))
    assert backend.started.wait(2)
    inputs = [_rows(rng, 2) for _ in range(4)]
    jobs = [batcher.submit(rows) for rows in inputs]
    gate.set()
    for job, rows in zip(jobs, inputs):
        np.testing.assert_allclose(job.future.result(2), expected_probabilities(rows))
    first.future.result(2)
    assert backend.batch_sizes == [1, 8]
    assert len({tuple(job.batch_ids) for job in jobs}) == 1
    batcher.close()


def test_batch_dispatches_at_the_delay_when_not_full(rng: np.random.Generator) -> None:
    backend = FakeBackend()
    batcher = _batcher(backend, max_batch_delay_s=0.05)
    batcher.announce(1)  # another request is decoding, but never arrives
    started = time.monotonic()
    batcher.submit(_rows(rng, 3)).future.result(2)
    elapsed = time.monotonic() - started
    assert backend.batch_sizes == [3]
    assert elapsed >= 0.045  # waited for company, then gave up at the delay
    batcher.withdraw(1)
    batcher.close()


def test_policy_off_never_merges_requests(rng: np.random.Generator) -> None:
    gate = threading.Event()
    backend = FakeBackend(gate=gate)
    batcher = _batcher(backend, policy="off")
    jobs = [batcher.submit(_rows(rng, 2)) for _ in range(3)]
    gate.set()
    for job in jobs:
        job.future.result(2)
    assert backend.batch_sizes == [2, 2, 2]
    batcher.close()


def test_failing_batch_fails_only_its_members_and_the_thread_survives(rng: np.random.Generator) -> None:
    gate = threading.Event()
    backend = FakeBackend(gate=gate, fail_with=RuntimeError("boom"))
    batcher = _batcher(backend, max_batch_delay_s=1.0)
    batcher.announce(4)  # the second request is decoding: the first waits for it
    doomed = [batcher.submit(_rows(rng, 4)), batcher.submit(_rows(rng, 4), announced=4)]  # one full batch
    gate.set()
    for job in doomed:
        with pytest.raises(ModelCallFailed, match="boom"):
            job.future.result(2)
    backend.fail_with = None
    rows = _rows(rng, 3)
    np.testing.assert_allclose(batcher.submit(rows).future.result(2), expected_probabilities(rows))
    assert backend.batch_sizes == [8, 3]
    batcher.close()


def test_full_queue_refuses_at_once_with_retry_after(rng: np.random.Generator) -> None:
    gate, _, batcher, running = _occupied(rng, 2, max_queue_size=10, max_batch_size=2)
    batcher.submit(_rows(rng, 10))  # fills the queue
    started = time.monotonic()
    with pytest.raises(QueueFull) as refused:
        batcher.submit(_rows(rng, 1))
    assert time.monotonic() - started < 0.1
    assert refused.value.retry_after_s >= 1  # sent as Retry-After by service.api.errors
    gate.set()
    running.future.result(2)
    batcher.close()


def test_abandoned_job_leaves_the_queue_and_never_runs(rng: np.random.Generator) -> None:
    gate, backend, batcher, running = _occupied(rng, 4, max_batch_size=4)
    waiting = batcher.submit(_rows(rng, 3))
    assert batcher.queued_images == 3
    batcher.abandon(waiting)  # what the view does on its 504
    assert batcher.queued_images == 0
    assert waiting.future.cancelled()
    gate.set()
    running.future.result(2)
    batcher.close()
    assert backend.batch_sizes == [4]


def test_oversize_request_is_split_and_reassembled_in_order(rng: np.random.Generator) -> None:
    backend = FakeBackend()
    batcher = _batcher(backend, max_batch_size=4, max_batch_delay_s=0.0)
    rows = _rows(rng, 11)
    job = batcher.submit(rows)
    np.testing.assert_allclose(job.future.result(2), expected_probabilities(rows))
    assert backend.batch_sizes == [4, 4, 3]
    assert job.batch_ids == [1, 2, 3]
    batcher.close()


def test_padding_uses_allowed_sizes_and_strips_the_padding(rng: np.random.Generator) -> None:
    backend = FakeBackend()
    batcher = _batcher(backend, max_batch_size=8, max_batch_delay_s=0.0, pad_batches=True)
    rows = _rows(rng, 5)
    np.testing.assert_allclose(batcher.submit(rows).future.result(2), expected_probabilities(rows))
    assert backend.batch_sizes == [8]
    assert allowed_batch_sizes(8) == [1, 2, 4, 8]
    assert allowed_batch_sizes(12) == [1, 2, 4, 8, 12]
    batcher.close()


def test_close_drains_queued_work_then_refuses(rng: np.random.Generator) -> None:
    gate = threading.Event()
    backend = FakeBackend(gate=gate)
    batcher = _batcher(backend, max_batch_size=2, max_batch_delay_s=5.0)
    jobs = [batcher.submit(_rows(rng, 2)) for _ in range(3)]
    closer = threading.Thread(target=batcher.close)
    closer.start()
    time.sleep(0.05)
    with pytest.raises(ShuttingDown):
        batcher.submit(_rows(rng, 1))
    gate.set()
    closer.join(5)
    assert not closer.is_alive()
    assert all(job.future.result(0) is not None for job in jobs)
    assert backend.batch_sizes == [2, 2, 2]


def test_many_threads_get_their_own_rows_back(rng: np.random.Generator) -> None:
    backend = FakeBackend(delay_s=0.002)
    batcher = _batcher(backend, max_batch_size=8, max_batch_delay_s=0.01, max_queue_size=512)
    inputs = [_rows(rng, int(n)) for n in rng.integers(1, 6, size=60)]

    def call(rows: np.ndarray) -> np.ndarray:
        return batcher.submit(rows).future.result(5)

    with ThreadPoolExecutor(max_workers=16) as pool:
        outputs = list(pool.map(call, inputs))
    for rows, out in zip(inputs, outputs):
        np.testing.assert_allclose(out, expected_probabilities(rows))
    assert max(backend.batch_sizes) > 1
    assert sum(backend.batch_sizes) == sum(len(rows) for rows in inputs)
    batcher.close()


def test_adaptive_policy_does_not_wait_for_a_lone_client(rng: np.random.Generator) -> None:
    backend = FakeBackend(delay_s=0.01)
    batcher = _batcher(backend, policy="adaptive", target_latency_s=1.0, max_batch_delay_s=0.05)
    latencies = []
    for _ in range(8):
        started = time.monotonic()
        batcher.submit(_rows(rng, 1)).future.result(2)
        latencies.append(time.monotonic() - started)
    # After the first few calls the arrival gap is known to exceed the per-call overhead.
    assert sorted(latencies)[len(latencies) // 2] < 0.1
    batcher.close()


def test_cost_model_fits_a_linear_batch_cost() -> None:
    cost = CostModel()
    for size in (1, 2, 4, 8, 1, 8):
        cost.observe(size, 0.010 + 0.002 * size)
    per_image_s, fixed_s = cost.fit()
    assert per_image_s == pytest.approx(0.002, rel=1e-6)
    assert fixed_s == pytest.approx(0.010, rel=1e-6)
    assert cost.estimate_s(16) == pytest.approx(0.042, rel=1e-6)


def test_several_batch_threads_run_batches_in_parallel(rng: np.random.Generator) -> None:
    gate = threading.Event()
    backend = FakeBackend(gate=gate)
    batcher = _batcher(backend, policy="off", num_threads=3)
    jobs = [batcher.submit(_rows(rng, 1)) for _ in range(3)]
    deadline = time.monotonic() + 2
    while batcher.queued_images and time.monotonic() < deadline:  # all three taken at once
        time.sleep(0.01)
    assert batcher.queued_images == 0 and not any(job.future.done() for job in jobs)
    gate.set()
    assert all(job.future.result(2).shape == (1, 2) for job in jobs)
    batcher.close()


def test_fixed_policy_waits_only_while_an_announced_request_is_on_its_way(rng: np.random.Generator) -> None:
    backend = FakeBackend()
    batcher = _batcher(backend, max_batch_delay_s=0.5)
    started = time.monotonic()
    batcher.submit(_rows(rng, 1)).future.result(2)  # alone: nobody announced, no wait
    assert time.monotonic() - started < 0.2
    batcher.announce(2)  # a request is decoding its 2 images
    first = batcher.submit(_rows(rng, 1))
    time.sleep(0.05)
    assert not first.future.done()  # waiting for the announced images
    second = batcher.submit(_rows(rng, 2), announced=2)
    first.future.result(2), second.future.result(2)
    assert backend.batch_sizes == [1, 3]
    batcher.announce(1)
    batcher.withdraw(1)  # its image failed to decode: nobody left to wait for
    started = time.monotonic()
    batcher.submit(_rows(rng, 1)).future.result(2)
    assert time.monotonic() - started < 0.2
    batcher.close()


def test_a_failure_outside_the_model_call_fails_only_its_batch(rng: np.random.Generator) -> None:
    calls: list[int] = []

    def broken_metrics(report: object) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("metrics backend hiccup")

    batcher = _batcher(FakeBackend(), on_batch=broken_metrics, max_batch_delay_s=0.001)
    rows = _rows(rng, 2)
    np.testing.assert_allclose(batcher.submit(rows).future.result(2), expected_probabilities(rows))
    np.testing.assert_allclose(batcher.submit(rows).future.result(2), expected_probabilities(rows))
    assert len(calls) == 2 and batcher.healthy()
    batcher.close()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_dead_batcher_thread_is_restarted_then_reported_unhealthy(rng: np.random.Generator) -> None:
    restarts: list[int] = []
    backend = FakeBackend(fail_with=SystemExit("thread killed"))
    batcher = _batcher(backend, on_thread_restart=lambda: restarts.append(1), max_batch_delay_s=0.001)
    for attempt in range(6):
        job = batcher.submit(_rows(rng, 1))
        with pytest.raises(ModelCallFailed, match="thread killed"):
            job.future.result(2)  # its own batch fails; nothing hangs
        deadline = time.monotonic() + 2
        while (batcher.alive_threads == 0) == (attempt < 5) and time.monotonic() < deadline:
            time.sleep(0.01)  # a successor thread starts (or, the sixth time, none)
        assert batcher.healthy() == (attempt < 5)
    assert len(restarts) == 5
    backend.fail_with = None
    batcher.close(1)


def test_interactive_rows_are_batched_before_background_rows(rng: np.random.Generator) -> None:
    gate, backend, batcher, running = _occupied(rng, 4, max_batch_size=4, max_background_queue_size=4)
    # Queued while the model is busy: a job's rows first, then three interactive requests.
    background = batcher.submit(_rows(rng, 3), background=True)
    interactive_rows = [_rows(rng, 2), _rows(rng, 2), _rows(rng, 1)]
    interactive = [batcher.submit(rows) for rows in interactive_rows]
    gate.set()
    for job, rows in zip(interactive, interactive_rows):
        np.testing.assert_allclose(job.future.result(2), expected_probabilities(rows))
    background.future.result(2)
    running.future.result(2)
    batcher.close()
    # 5 interactive rows: a full batch of 4, then the fifth alone; the job's rows never join them.
    assert backend.batch_sizes == [4, 4, 1, 3]
    assert interactive[0].batch_ids == interactive[1].batch_ids
    assert interactive[1].batch_ids[0] < interactive[2].batch_ids[0] < background.batch_ids[0]


def test_background_rows_wait_while_an_interactive_request_is_announced(rng: np.random.Generator) -> None:
    backend = FakeBackend()
    batcher = _batcher(backend, max_batch_size=4)
    batcher.announce(2)  # an interactive request is decoding its images
    background = batcher.submit(_rows(rng, 2), background=True)
    assert not backend.started.wait(0.2)  # the idle model does not start the job's rows
    interactive = batcher.submit(_rows(rng, 2), announced=2)
    interactive.future.result(2)
    background.future.result(2)
    batcher.close()
    assert backend.batch_sizes == [2, 2]
    assert interactive.batch_ids[0] < background.batch_ids[0]


def test_background_queue_is_small_and_separate(rng: np.random.Generator) -> None:
    gate, backend, batcher, running = _occupied(rng, 2, max_batch_size=2, max_queue_size=4,
                                                max_background_queue_size=2)
    job_rows = batcher.submit(_rows(rng, 2), background=True)
    with pytest.raises(QueueFull):
        batcher.submit(_rows(rng, 1), background=True)  # a job holds at most 2 rows queued
    assert batcher.queued_images == 0  # job rows take no room from interactive requests
    batcher.submit(_rows(rng, 4))  # the whole interactive queue is still free
    assert batcher.describe()["queued_background_images"] == 2
    batcher.abandon(job_rows)
    assert batcher.describe()["queued_background_images"] == 0
    gate.set()
    running.future.result(2)
    batcher.close()
    assert backend.batch_sizes == [2, 2, 2]


def test_idle_only_when_no_interactive_image_is_queued_announced_or_running(rng: np.random.Generator) -> None:
    gate = threading.Event()
    backend = FakeBackend(gate=gate)
    batcher = _batcher(backend)
    assert batcher.wait_idle(0)
    batcher.announce(1)
    assert not batcher.wait_idle(0)
    running = batcher.submit(_rows(rng, 1), announced=1)
    assert backend.started.wait(2)
    assert not batcher.wait_idle(0)  # its batch is running
    gate.set()
    running.future.result(2)
    assert batcher.wait_idle(2)
    background = batcher.submit(_rows(rng, 1), background=True)
    background.future.result(2)
    assert batcher.wait_idle(0)  # job rows never make the batcher busy for other jobs
    batcher.close()
