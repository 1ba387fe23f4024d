"""Data order of a run: which clips each rank reads for each optimizer step, and seeds.

Both are pure functions of (seed, epoch, step, micro-batch): the same with one
process or many, and the same again after a resume.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (numpy SeedSequence hashing)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0] >> np.uint64(1))


class GlobalBatchSampler:
    """The distributed sampler: which clips each rank reads for each optimizer step.

    Epoch e visits a permutation drawn from (seed, e); optimizer step s uses
    clips [s·G, (s+1)·G) of it, G = micro_batch · world · accum, split into micro-
    batches m = a·world + rank. The last incomplete global batch is dropped.
    Iterating from ``start_step`` replays exactly the rest of an epoch.
    """

    def __init__(self, num_items: int, micro_batch: int, world: int, rank: int, accum: int, seed: int):
        self.num_items, self.micro_batch, self.world, self.rank, self.accum, self.seed = num_items, micro_batch, world, rank, accum, seed
        self.global_batch = micro_batch * world * accum
        self.steps_per_epoch = num_items // self.global_batch

    def order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch, 0x5A3]).permutation(self.num_items)

    def micro_batch_indices(self, epoch: int, step: int, a: int, order: Optional[np.ndarray] = None) -> Tuple[int, List[int]]:
        order = self.order(epoch) if order is None else order
        m = a * self.world + self.rank
        start = step * self.global_batch + m * self.micro_batch
        return m, order[start : start + self.micro_batch].tolist()

    def batches(self, epoch: int, start_step: int = 0) -> List[List[int]]:
        order = self.order(epoch)
        return [self.micro_batch_indices(epoch, s, a, order)[1] for s in range(start_step, self.steps_per_epoch) for a in range(self.accum)]
