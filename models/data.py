"""Lightning data module over an :class:`unrolled.problems.Problem`: fresh training batches, fixed evaluation sets."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Sampler, TensorDataset

from unrolled.problems import Problem
from unrolled.problems.base import EpochSampler


class TrainerEpochSampler(EpochSampler):
    """:class:`EpochSampler` that reads its epoch from ``trainer.current_epoch`` when iteration starts.

    Lightning passes ``set_epoch`` its count of processed epochs. After a resume from an end-of-epoch
    checkpoint of a ``max_steps`` run, that count is one ahead of ``current_epoch``
    (pytorch-lightning 2.6), so the resumed run would draw other batches than the uninterrupted one.
    """

    def __init__(self, steps_per_epoch: int, trainer: pl.Trainer) -> None:
        super().__init__(steps_per_epoch)
        self.trainer = trainer

    def __iter__(self) -> Iterator[int]:
        self.epoch = self.trainer.current_epoch
        return super().__iter__()


class RankShard(Sampler[int]):
    """Indices ``rank``, ``rank + world_size``, ... of a dataset of ``size`` samples, in order.

    Every sample goes to exactly one rank. Unlike :class:`torch.utils.data.DistributedSampler`,
    nothing is repeated to even out the shards, so sums reduced over ranks (the states of
    :class:`unrolled.metrics.LayerwiseNMSE`) count each sample once.
    """

    def __init__(self, size: int, rank: int, world_size: int) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must lie in [0, world_size) = [0, {world_size}), got {rank}.")
        self.indices = range(rank, size, world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class ProblemDataModule(pl.LightningDataModule):
    """Training batches drawn on the fly from the problem's train seed; validation and test sets from theirs.

    Each DDP rank draws from its own stream (the rank enters the seed), so ranks see different
    samples. The validation and test sets are split between the ranks (:class:`RankShard`), and the
    metrics, whose states are sums, are reduced over ranks by torchmetrics.

    Args:
        problem: the problem to sample.
        batch_size: training batch size per process.
        steps_per_epoch: training batches per epoch; a checkpoint is written at every epoch end.
        eval_batch_size: batch size of the validation and test loaders.
    """

    def __init__(self, problem: Problem, batch_size: int = 256, steps_per_epoch: int = 500, eval_batch_size: int = 1000) -> None:
        super().__init__()
        self.problem = problem
        self.batch_size = batch_size
        self.steps_per_epoch = steps_per_epoch
        self.eval_batch_size = eval_batch_size

    def train_dataloader(self) -> DataLoader:
        if self.trainer is None:
            return self.problem.train_loader(self.batch_size, self.steps_per_epoch)
        loader = self.problem.train_loader(self.batch_size, self.steps_per_epoch, rank=self.trainer.global_rank)
        return DataLoader(loader.dataset, batch_size=None, sampler=TrainerEpochSampler(self.steps_per_epoch, self.trainer))

    def _fixed_loader(self, split: str) -> DataLoader:
        y, x = self.problem.fixed_set(split)
        dataset = TensorDataset(y.to(torch.float32), x.to(torch.float32))
        if self.trainer is None or self.trainer.world_size == 1:
            return DataLoader(dataset, batch_size=self.eval_batch_size, shuffle=False)
        shard = RankShard(len(dataset), self.trainer.global_rank, self.trainer.world_size)
        return DataLoader(dataset, batch_size=self.eval_batch_size, sampler=shard)

    def val_dataloader(self) -> DataLoader:
        return self._fixed_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._fixed_loader("test")

    def state_dict(self) -> dict[str, Any]:
        return {"batch_size": self.batch_size, "steps_per_epoch": self.steps_per_epoch}
