"""Training batches: the seeded global batch of every epoch and this process's share of it."""
import random

import numpy as np
import torch
from torch.utils.data import Sampler


class GlobalBatchSampler(Sampler):
    """Batches of ``batch_size`` videos, shuffled per epoch, the last partial batch kept.

    The global batches are the same on every process and for every number of
    processes: epoch e visits the videos in the order ``torch.randperm(n)`` of a
    generator seeded ``seed + e`` (the permutation torch's ``RandomSampler``
    draws from such a generator), cut into consecutive batches. Each global
    batch is stably sorted by caption count, descending (the order in which
    ``collate_train`` lays a batch out), then cut into ``world`` contiguous
    shares whose sizes differ by at most one; process ``rank`` yields share
    ``rank``. Laid end to end in rank order, the shares are the one-process
    batch, so gathering the shares' outputs rebuilds it exactly. A share is
    empty when a batch has fewer videos than there are processes.

    Args:
        sort_counts: the sort key of each video in dataset order (its caption count,
            or its frame count after pooling; ``collate_train``'s ``sort_by``).
        batch_size: videos per global batch.
        seed: base seed of the per-epoch order.
        rank, world: this process and the number of processes.
    """

    def __init__(self, sort_counts, batch_size, seed, rank=0, world=1):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is not in [0, {world})")
        self.sort_counts = [int(c) for c in sort_counts]
        self.batch_size, self.seed, self.rank, self.world = batch_size, seed, rank, world
        self.epoch = 0

    def set_epoch(self, epoch):
        """Select the order of ``epoch`` (0-based); call before iterating."""
        self.epoch = epoch

    def global_batches(self):
        """The epoch's global batches: lists of dataset indices, each sorted by ``sort_counts`` (descending)."""
        n = len(self.sort_counts)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist()
        counts = self.sort_counts
        return [sorted(order[s:s + self.batch_size], key=lambda i: -counts[i])  # sorted() is stable
                for s in range(0, n, self.batch_size)]

    def __iter__(self):
        for batch in self.global_batches():
            yield share(batch, self.rank, self.world)

    def __len__(self):
        return -(-len(self.sort_counts) // self.batch_size)


def share(batch, rank, world):
    """Process ``rank``'s contiguous share of a global batch; shares differ in size by at most one."""
    base, extra = divmod(len(batch), world)
    start = rank * base + min(rank, extra)
    return batch[start:start + base + (rank < extra)]


def block_range(n, block, rank, world):
    """Process ``rank``'s contiguous share of ``n`` items cut into blocks of ``block``: whole blocks, as ``share``.

    Each block holds the same items as when one process takes them all (the
    blocks start at multiples of ``block``), so a block is encoded exactly as
    one process encodes it.
    """
    blocks = share(range(-(-n // block)), rank, world)
    if not blocks:
        return range(0)
    return range(blocks[0] * block, min(n, (blocks[-1] + 1) * block))


def seed_worker(worker_id):
    """DataLoader worker_init_fn: seed numpy and random from torch's per-worker seed."""
    seed = torch.initial_seed() % 2 ** 32
    np.random.seed(seed)
    random.seed(seed)
