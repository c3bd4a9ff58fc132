"""Lightning data module over an :class:`unrolled.problems.Problem`: fresh training batches, fixed evaluation sets."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from unrolled.problems import Problem


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
        rank = self.trainer.global_rank if self.trainer is not None else 0
        return self.problem.train_loader(self.batch_size, self.steps_per_epoch, rank=rank)

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
