"""Micro-batching between the request pipeline and the backend (see `batcher` and `policy`)."""

from service.batching.batcher import BatchJob, BatchReport, MicroBatcher, Reservation
from service.batching.policy import ArrivalRate, BatchingPolicy, CostModel, PolicyName, allowed_batch_sizes

__all__ = [
    "ArrivalRate", "BatchJob", "BatchReport", "BatchingPolicy", "CostModel", "MicroBatcher", "PolicyName",
    "Reservation", "allowed_batch_sizes",
]
