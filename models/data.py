"""Lightning data module over an :class:`unrolled.problems.Problem`: fresh training batches, fixed evaluation sets."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

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


class ProblemDataModule(pl.LightningDataModule):
    """Training batches drawn on the fly from the problem's train seed; validation and test sets from theirs.

    Each DDP rank draws from its own stream (the rank enters the seed), so ranks see different samples.

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
        return DataLoader(dataset, batch_size=self.eval_batch_size, shuffle=False)

    def val_dataloader(self) -> DataLoader:
        return self._fixed_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._fixed_loader("test")

    def state_dict(self) -> dict[str, Any]:
        return {"batch_size": self.batch_size, "steps_per_epoch": self.steps_per_epoch}
