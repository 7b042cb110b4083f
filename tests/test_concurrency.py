"""Batches in flight per worker, chosen from the device and the cost curve measured at warm-up."""

from __future__ import annotations

from service.batching.concurrency import (
    CostCurve,
    available_cores,
    choose_batch_size,
    choose_batch_threads,
    next_batch_fits,
)

FLAT = CostCurve({1: 0.040, 8: 0.315})  # the paper CNN on 2 cores: 1.02x
STEEP = CostCurve({1: 0.004, 8: 0.006})  # a small CNN: overhead dominates


def test_a_configured_value_wins() -> None:
    assert choose_batch_threads(3, ["/physical_device:CPU:0"], FLAT, 2)[0] == 3


def test_cpu_where_batching_buys_nothing_keeps_several_calls_in_flight() -> None:
    threads, reason = choose_batch_threads(0, ["/physical_device:CPU:0"], FLAT, 2)
    assert threads == 2 and "1.02x" in reason
    assert choose_batch_threads(0, ["/physical_device:CPU:0"], FLAT, 16)[0] == 4
    assert choose_batch_threads(0, ["/physical_device:CPU:0"], FLAT, 1)[0] == 1


def test_cpu_where_batching_pays_runs_one_batch_at_a_time() -> None:
    assert choose_batch_threads(0, ["/physical_device:CPU:0"], STEEP, 2)[0] == 1


def test_gpu_remote_and_unmeasured() -> None:
    assert choose_batch_threads(0, ["/physical_device:GPU:0"], FLAT, 16)[0] == 2
    assert choose_batch_threads(0, ["tfserving://tfserving:8500"], None, 2)[0] == 4
    assert choose_batch_threads(0, ["/physical_device:CPU:0"], None, 2)[0] == 1
    assert available_cores() >= 1


def test_extra_calls_only_while_memory_holds_their_activations() -> None:
    heavy = CostCurve({1: 0.040, 8: 0.315}, batch_bytes=900 * 2**20)
    assert choose_batch_threads(0, ["/physical_device:CPU:0"], heavy, 2, 20 * 2**30)[0] == 2
    threads, reason = choose_batch_threads(0, ["/physical_device:CPU:0"], heavy, 2, 100 * 2**20)
    assert threads == 1 and "memory holds 1" in reason  # a 3 GiB pod already near its limit
    assert choose_batch_threads(0, ["/physical_device:CPU:0"], heavy, 4, 2 * 2**30)[0] == 3


CPU = ["/physical_device:CPU:0"]


def test_the_batch_size_is_the_smallest_near_the_best_cost_per_image() -> None:
    paper = CostCurve({1: 0.047, 2: 0.095, 4: 0.188})  # flat: 47 ms per image at every size
    assert choose_batch_size(8, True, CPU, paper)[0] == 1
    small = CostCurve({1: 0.004, 2: 0.0045, 4: 0.005, 8: 0.006})  # overhead dominates
    assert choose_batch_size(8, True, CPU, small)[0] == 8
    knee = CostCurve({1: 0.010, 2: 0.011, 4: 0.0125, 8: 0.024})  # 4 is within 10% of 8's cost
    size, reason = choose_batch_size(8, True, CPU, knee)
    assert size == 4 and "ms per image" in reason


def test_the_configured_maximum_where_batching_is_the_point() -> None:
    paper = CostCurve({1: 0.047, 2: 0.095})
    assert choose_batch_size(8, False, CPU, paper)[0] == 8
    assert choose_batch_size(16, True, ["/physical_device:GPU:0"], paper)[0] == 16
    assert choose_batch_size(16, True, ["tfserving://tfserving:8500"], None)[0] == 16
    assert choose_batch_size(8, True, CPU, None)[0] == 8


def test_memory_per_call_scales_to_the_batch_size_in_use() -> None:
    heavy = CostCurve({1: 0.040, 8: 0.315}, batch_bytes=800 * 2**20)
    # 100 MiB per image: at batch 1, 700 MiB of headroom holds every core's call.
    assert choose_batch_threads(0, CPU, heavy, 4, 700 * 2**20, batch_size=1)[0] == 4
    assert choose_batch_threads(0, CPU, heavy, 4, 700 * 2**20)[0] == 1


def test_the_next_batch_fits_while_twice_the_growth_holds_in_the_budget() -> None:
    mib = 2**20
    assert next_batch_fits(250 * mib, 640 * mib)  # paper CNN: batch 2 ~500 MiB
    assert not next_batch_fits(510 * mib, 640 * mib)  # batch 4 ~1 GiB
    assert next_batch_fits(10**12, 0)  # 0: no bound
