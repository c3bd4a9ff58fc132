"""LightningModule that trains any registered unrolled network on any registered problem."""

from __future__ import annotations

import logging
import math
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor
from torchmetrics import MinMetric

from models.registry import build_network
from unrolled.metrics import LayerwiseNMSE
from unrolled.problems import build_problem

log = logging.getLogger(__name__)

LOSSES = ("mse_last", "mse_all")


class NonFiniteLossError(FloatingPointError):
    """Raised when the training loss or the model's parameters stop being finite."""


class UnrolledModule(pl.LightningModule):
    """Supervised training of an unrolled network: the loss compares layer outputs with the true code x.

    The network is a plain ``nn.Module`` built from the registry; this class only adds training logic.
    Every constructor argument is plain data (str, int, float, bool, dict, list), so Lightning
    checkpoints load with ``torch.load(weights_only=True)``.

    Args:
        network: registered network name (``models.registry.NETWORKS``).
        n_layers: depth of the network.
        network_kwargs: extra constructor arguments of the network (``reg``, ``tied``, ...).
        problem: problem spec, as returned by ``Problem.spec()``.
        loss: ``"mse_last"`` (mean squared error of the last layer) or ``"mse_all"`` (mean over layers).
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        lr_min_ratio: the cosine schedule decays the rate from ``lr`` to ``lr · lr_min_ratio`` over the run.
    """

    def __init__(
        self,
        network: str,
        n_layers: int,
        problem: dict[str, Any],
        network_kwargs: dict[str, Any] | None = None,
        loss: str = "mse_last",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        lr_min_ratio: float = 0.01,
    ) -> None:
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}.")
        if not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"lr must be a positive finite number, got {lr}.")
        self.save_hyperparameters()
        self.problem = build_problem(problem)
        self.network = build_network(network, self.problem.A.to(torch.float32), n_layers, **(network_kwargs or {}))
        self.val_nmse = LayerwiseNMSE(n_layers)
        self.test_nmse = LayerwiseNMSE(n_layers)
        self.val_nmse_best = MinMetric()

    def forward(self, y: Tensor) -> Tensor:
        return self.network(y)

    def compute_loss(self, x_hats: Tensor, x: Tensor) -> Tensor:
        if self.hparams.loss == "mse_last":
            return (x_hats[-1] - x).square().mean()
        return (x_hats - x).square().mean()

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        y, x = batch
        loss = self.compute_loss(self.network(y), x)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"training loss is {loss.item()} at global step {self.global_step} (epoch {self.current_epoch}); "
                "training stopped and the checkpoints already written are kept. "
                "Lower the learning rate or set trainer.gradient_clip_val."
            )
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        y, x = batch
        self.val_nmse.update(self.network(y), x)

    def on_validation_epoch_end(self) -> None:
        values = self.val_nmse.compute()
        self.val_nmse.reset()
        last = values["nmse_db"][-1]
        # Raising here, before ModelCheckpoint's on_validation_end, keeps a NaN model out of the checkpoints.
        if not torch.isfinite(last) or not all(torch.isfinite(p).all() for p in self.network.parameters()):
            raise NonFiniteLossError(
                f"validation NMSE is {last.item()} at global step {self.global_step}: the parameters are no "
                "longer finite. Training stopped; the checkpoints already written are kept."
            )
        self.val_nmse_best.update(last)
        self.log("val/nmse_db", last.float(), prog_bar=True)
        self.log("val/nmse_db_per_sample", values["nmse_db_per_sample"][-1].float())
        self.log("val/nmse_db_best", self.val_nmse_best.compute().float())
        for k, value in enumerate(values["nmse_db"].tolist(), start=1):
            self.log(f"val/nmse_db_layer_{k:02d}", value)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        y, x = batch
        self.test_nmse.update(self.network(y), x)

    def on_test_epoch_end(self) -> None:
        values = self.test_nmse.compute()
        self.test_results = {name: tensor.tolist() for name, tensor in values.items()}
        self.test_nmse.reset()
        self.log("test/nmse_db", values["nmse_db"][-1].float())
        self.log("test/nmse_db_per_sample", values["nmse_db_per_sample"][-1].float())

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = torch.optim.Adam(self.network.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        total_steps = max(1, int(self.trainer.estimated_stepping_batches))
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=total_steps, eta_min=self.hparams.lr * self.hparams.lr_min_ratio
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
