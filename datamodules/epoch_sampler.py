"""The data loaders' sampler: an order that depends only on (seed, epoch), sharded across DDP ranks.

Resuming a killed run must give the same result as an uninterrupted one, so nothing in the data
pipeline may depend on the global RNG state: the shuffle comes from (seed, epoch) and each
training sample's augmentation from (seed, epoch, index). The sampler passes the epoch to the
dataset by yielding ``epoch * len(dataset) + index``; :class:`~facebench.datamodules.dataset.FaceDataset`
decodes it. Lightning calls :meth:`set_epoch` on it every epoch; the Trainer runs with
``use_distributed_sampler=False`` because this sampler shards itself (rank ``r`` of ``w`` takes
every ``w``-th item of the padded order, like ``DistributedSampler``).
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Sampler


def _rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class EpochShardSampler(Sampler[int]):
    def __init__(self, n: int, *, shuffle: bool, seed: int = 0, encode_epoch: bool = False):
        self.n, self.shuffle, self.seed, self.encode_epoch = n, shuffle, seed, encode_epoch
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def order(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            return torch.randperm(self.n, generator=g).tolist()
        return list(range(self.n))

    def __iter__(self) -> Iterator[int]:
        rank, world = _rank_world()
        order = self.order()
        if world > 1 and order:
            total = -(-len(order) // world) * world
            order = (order * (total // len(order) + 1))[:total]
            order = order[rank::world]
        offset = self.epoch * self.n if self.encode_epoch else 0
        return iter([offset + i for i in order])

    def __len__(self) -> int:
        _, world = _rank_world()
        return -(-self.n // world)
