"""Batches in flight per worker, chosen from the device and the cost curve measured at warm-up."""

from __future__ import annotations

from service.batching.concurrency import CostCurve, available_cores, choose_batch_threads

FLAT = CostCurve(batch_size=8, batch_1_s=0.040, batch_max_s=0.315)  # the paper CNN on 2 cores: 1.02x
STEEP = CostCurve(batch_size=8, batch_1_s=0.004, batch_max_s=0.006)  # a small CNN: overhead dominates


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
    heavy = CostCurve(batch_size=8, batch_1_s=0.040, batch_max_s=0.315, batch_bytes=900 * 2**20)
    assert choose_batch_threads(0, ["/physical_device:CPU:0"], heavy, 2, 20 * 2**30)[0] == 2
    threads, reason = choose_batch_threads(0, ["/physical_device:CPU:0"], heavy, 2, 100 * 2**20)
    assert threads == 1 and "memory holds 1" in reason  # a 3 GiB pod already near its limit
    assert choose_batch_threads(0, ["/physical_device:CPU:0"], heavy, 4, 2 * 2**30)[0] == 3
