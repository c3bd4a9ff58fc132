"""LightningModule that trains any registered unrolled network on any registered problem."""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor
from torchmetrics import MeanMetric, MinMetric

from models.registry import build_network
from unrolled.compile import compile_or_eager
from unrolled.metrics import LayerwiseNMSE
from unrolled.objectives import lasso_objective
from unrolled.problems import build_problem

log = logging.getLogger(__name__)

LOSSES = ("mse_last", "mse_all", "lasso")
LR_SCHEDULES = ("cosine", "constant")


class NonFiniteLossError(FloatingPointError):
    """Raised when the training loss or the model's parameters stop being finite."""


def check_training_loss(module: pl.LightningModule, loss: Tensor) -> None:
    """Raise :class:`NonFiniteLossError` when ``loss`` is NaN or infinite, naming the step, so that no NaN model is saved."""
    if not torch.isfinite(loss):
        raise NonFiniteLossError(
            f"training loss is {loss.item()} at global step {module.global_step} (epoch {module.current_epoch}); "
            "training stopped and the checkpoints already written are kept. "
            "Lower the learning rate or set trainer.gradient_clip_val."
        )


class TimedTraining(pl.LightningModule):
    """Counts training wall-clock time over every session of a resumed run (stored in the checkpoints)."""

    def __init__(self) -> None:
        super().__init__()
        # Training time of the sessions before a resume, restored from the checkpoint.
        self.training_time_before_s = 0.0
        self._fit_started: float | None = None

    def on_train_start(self) -> None:
        self._fit_started = time.perf_counter()

    def training_time_s(self) -> float:
        """Wall-clock seconds of training so far, over every session of a resumed run."""
        if self._fit_started is None:
            return self.training_time_before_s
        return self.training_time_before_s + time.perf_counter() - self._fit_started

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["training_time_s"] = self.training_time_s()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.training_time_before_s = float(checkpoint.get("training_time_s", 0.0))


def with_lr_schedule(module: pl.LightningModule, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Return the value of ``configure_optimizers``: the optimizer, with a per-step cosine decay to ``lr · lr_min_ratio`` unless ``lr_schedule`` is constant."""
    if module.hparams.lr_schedule == "constant":
        return {"optimizer": optimizer}
    total_steps = max(1, int(module.trainer.estimated_stepping_batches))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=total_steps, eta_min=module.hparams.lr * module.hparams.lr_min_ratio
    )
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class UnrolledModule(TimedTraining):
    """Training of an unrolled network, supervised on the true code x or unsupervised on the Lasso objective.

    The network is a plain ``nn.Module`` built from the registry; this class only adds training logic.
    Every constructor argument is plain data (str, int, float, bool, dict, list), so Lightning
    checkpoints load with ``torch.load(weights_only=True)``.

    Validation logs the NMSE of every layer (``val/nmse_db_layer_KK``) and, as ``val/nmse_db``, that of
    the last layer. When ``lasso_reg`` is set it also logs ``val/lasso_objective``, the mean over
    samples of the last layer's Lasso objective.

    ``active_layer`` is None for end-to-end training. The layer-wise protocol
    (:class:`models.layerwise.LayerwiseTraining`) sets it to the layer k being trained: the training
    loss is then that of the network cut after layer k, and validation also logs layer k's NMSE as
    ``val/nmse_db_active``.

    Args:
        network: registered network name (``models.registry.NETWORKS``).
        n_layers: depth of the network.
        network_kwargs: extra constructor arguments of the network (``reg``, ``tied``, ...).
        problem: problem spec, as returned by ``Problem.spec()``.
        loss: ``"mse_last"`` (mean squared error of the last layer), ``"mse_all"`` (mean over layers) or
            ``"lasso"`` (mean over samples of ½‖A x_K − y‖² + lasso_reg·‖x_K‖₁ of the last layer x_K;
            unsupervised, x is not used).
        lasso_reg: reg of the Lasso objective; required by ``loss="lasso"``.
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        lr_min_ratio: the cosine schedule decays the rate from ``lr`` to ``lr · lr_min_ratio`` over the run.
        lr_schedule: ``"cosine"``, or ``"constant"`` for no scheduler (the layer-wise protocol sets
            the rate of each stage itself).
        checkpoint_every: activation checkpointing in segments of this many layers during training
            (see :class:`unrolled.layers.base.UnrolledISTA`); None stores every activation.
        compile: run the network's forward passes through ``torch.compile``
            (:func:`unrolled.compile.compile_or_eager`, which falls back to eager mode with a
            warning when compilation fails). The weights and checkpoints are those of the plain network.
    """

    def __init__(
        self,
        network: str,
        n_layers: int,
        problem: dict[str, Any],
        network_kwargs: dict[str, Any] | None = None,
        loss: str = "mse_last",
        lasso_reg: float | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        lr_min_ratio: float = 0.01,
        lr_schedule: str = "cosine",
        checkpoint_every: int | None = None,
        compile: bool = False,
    ) -> None:
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}.")
        if loss == "lasso" and lasso_reg is None:
            raise ValueError(
                "loss='lasso' needs lasso_reg (the reg of the objective ½‖Ax − y‖² + reg·‖x‖₁), got None. "
                "Set model.lasso_reg, as conf/model/slista.yaml does with the network's reg."
            )
        if lasso_reg is not None and not (math.isfinite(lasso_reg) and lasso_reg >= 0):
            raise ValueError(f"lasso_reg must be a finite number >= 0, got {lasso_reg}.")
        if not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"lr must be a positive finite number, got {lr}.")
        if lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {lr_schedule!r}.")
        self.save_hyperparameters()
        self.problem = build_problem(problem)
        self.network = build_network(network, self.problem.A.to(torch.float32), n_layers, **(network_kwargs or {}))
        self.network.checkpoint_every = checkpoint_every
        # A plain function, not a module attribute, so that the state dict keeps only the network's own names.
        self._compiled_network = compile_or_eager(self.network.forward, f"network {network}") if compile else None
        self.val_nmse = LayerwiseNMSE(n_layers)
        self.test_nmse = LayerwiseNMSE(n_layers)
        self.val_nmse_best = MinMetric()
        self.val_lasso = MeanMetric()
        self.test_lasso = MeanMetric()
        self.active_layer: int | None = None

    def forward(self, y: Tensor) -> Tensor:
        return self.run_network(y)

    def run_network(self, y: Tensor, **kwargs: Any) -> Tensor:
        """Apply the network, through ``torch.compile`` when the module was built with ``compile=True``."""
        if self._compiled_network is not None:
            return self._compiled_network(y, **kwargs)
        return self.network(y, **kwargs)

    def lasso(self, x_hat: Tensor, y: Tensor, dtype: torch.dtype | None = None) -> Tensor:
        """Per-sample Lasso objective of the estimate ``x_hat`` with reg ``lasso_reg``, in ``dtype`` (that of ``x_hat`` by default)."""
        return lasso_objective(x_hat, y, self.network.A, self.hparams.lasso_reg, dtype=dtype)

    def compute_loss(self, x_hats: Tensor, x: Tensor, y: Tensor | None = None) -> Tensor:
        """Loss of the stacked layer outputs ``x_hats``: against the true code ``x``, or the Lasso objective of ``y``."""
        if self.hparams.loss == "lasso":
            if y is None:
                raise ValueError("loss='lasso' needs the measurements y.")
            return self.lasso(x_hats[-1], y).mean()
        if self.hparams.loss == "mse_last":
            return (x_hats[-1] - x).square().mean()
        return (x_hats - x).square().mean()

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        y, x = batch
        # With active_layer = k (layer-wise training) the network stops after layer k, so the last output is layer k's.
        # Only mse_all needs every layer's estimate; the other losses let the earlier ones be freed.
        x_hats = self.run_network(y, n_layers=self.active_layer, all_layers=self.hparams.loss == "mse_all")
        loss = self.compute_loss(x_hats, x, y)
        check_training_loss(self, loss)
        self.log("train/loss", loss, prog_bar=True)
        if self.hparams.loss == "lasso":
            self.log("train/lasso_objective", loss)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        y, x = batch
        x_hats = self.run_network(y)
        self.val_nmse.update(x_hats, x)
        if self.hparams.lasso_reg is not None:
            self.val_lasso.update(self.lasso(x_hats[-1], y, torch.float64))

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
        if self.active_layer is not None:
            self.log("val/nmse_db_active", values["nmse_db"][self.active_layer - 1].float(), prog_bar=True)
        if self.hparams.lasso_reg is not None:
            self.log("val/lasso_objective", self.val_lasso.compute())
            self.val_lasso.reset()

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        y, x = batch
        x_hats = self.run_network(y)
        self.test_nmse.update(x_hats, x)
        if self.hparams.lasso_reg is not None:
            self.test_lasso.update(self.lasso(x_hats[-1], y, torch.float64))

    def on_test_epoch_end(self) -> None:
        values = self.test_nmse.compute()
        self.test_results = {name: tensor.tolist() for name, tensor in values.items()}
        self.test_nmse.reset()
        self.log("test/nmse_db", values["nmse_db"][-1].float())
        self.log("test/nmse_db_per_sample", values["nmse_db_per_sample"][-1].float())
        if self.hparams.lasso_reg is not None:
            self.log("test/lasso_objective", self.test_lasso.compute())
            self.test_lasso.reset()

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = torch.optim.Adam(self.network.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        return with_lr_schedule(self, optimizer)
