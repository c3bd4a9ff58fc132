r"""Layer-wise training of an unrolled network, one layer at a time, in stages of decreasing learning rate.

For each layer k = 1..K in turn:

* stage 1 trains only the entries of layer k, at the base rate;
* stage 2 trains layers 1..k and the shared parameters at 0.2 × that rate;
* stage 3 does the same at 0.02 × that rate.

The loss of every stage is the mean squared error of layer k's output (the network cut after
layer k). A stage ends when layer k's validation NMSE has not improved for ``patience`` validation
checks. The run stops after the last stage of the last layer.

Reference: Chen, Liu, Wang, Yin, "Theoretical linear convergence of unfolded ISTA and its practical
weights and thresholds", NeurIPS 2018, arXiv:1808.10038, and their code (github.com/VITA-Group/LISTA-CPSS,
``utils/train.py``: stage factors 0.2 and 0.02, validation every 10 steps, a stage ends after 4,000 steps
without a better validation NMSE). That code also multiplies the rate of the layers already trained by 0.3
after each layer. This implementation keeps one rate for all trainable entries of a stage.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.trainer.states import TrainerFn

from models.trainer import first_rank_only

log = logging.getLogger(__name__)
log.addFilter(first_rank_only)

STAGE_LR_FACTORS = (1.0, 0.2, 0.02)
ACTIVE_NMSE_KEY = "val/nmse_db_active"


class LayerwiseTraining(pl.Callback):
    r"""Lightning callback that trains an :class:`~models.module.UnrolledModule` layer by layer.

    The module keeps one Adam optimiser over all network parameters, so its parameter groups and
    Lightning's checkpoints stay as in end-to-end training. The callback

    * sets ``module.active_layer`` to the layer k being trained, which makes the training loss that
      of layer k and makes validation log layer k's NMSE as ``val/nmse_db_active``;
    * zeroes, before every optimiser step, the gradient of every entry outside the stage's trainable
      set. Entry i along dimension 0 of a parameter listed with offset o by
      ``network.per_layer_parameters()`` belongs to layer o + i + 1 (counted from 1). Unlisted
      parameters are shared by all layers: stage 1 freezes them and the later stages train them;
    * clears Adam's state and sets the rate at every change of stage. Frozen entries then keep zero
      moments and a zero gradient, so Adam moves them by exactly 0.

    Its state (layer, stage, best NMSE of the stage, checks without improvement) is saved in the
    checkpoints, so a run resumed from ``last.ckpt`` continues as the uninterrupted run would.

    Requirements, checked when fitting starts: the module's loss is ``mse_last``, its network lists
    per-layer parameters, it has no learning-rate scheduler (``lr_schedule="constant"``) and no
    weight decay (Adam's decay would move frozen entries).

    Args:
        lr: Adam rate of stage 1; stage s uses ``lr * lr_factors[s - 1]``.
        lr_factors: rate factor of each stage. The number of stages is its length; stage 1 trains
            layer k alone and the later stages train layers 1..k.
        patience: validation checks without improvement of layer k's NMSE that end a stage.
        min_delta: decrease of the NMSE, in dB, that counts as an improvement.
        n_layers: train layers 1..``n_layers``; None trains every layer of the network.
    """

    def __init__(
        self,
        lr: float = 5e-4,
        lr_factors: Sequence[float] = STAGE_LR_FACTORS,
        patience: int = 10,
        min_delta: float = 0.0,
        n_layers: int | None = None,
    ) -> None:
        super().__init__()
        if not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"lr must be a positive finite number, got {lr}.")
        lr_factors = tuple(float(factor) for factor in lr_factors)
        if not lr_factors or not all(math.isfinite(factor) and factor > 0 for factor in lr_factors):
            raise ValueError(f"lr_factors must be a non-empty list of positive finite numbers, got {list(lr_factors)}.")
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"patience must be an integer >= 1 (validation checks), got {patience!r}.")
        if not (math.isfinite(min_delta) and min_delta >= 0):
            raise ValueError(f"min_delta must be a finite number >= 0 (dB), got {min_delta}.")
        if n_layers is not None and (isinstance(n_layers, bool) or not isinstance(n_layers, int) or n_layers < 1):
            raise ValueError(f"n_layers must be an integer >= 1 or None, got {n_layers!r}.")
        self.lr = float(lr)
        self.lr_factors = lr_factors
        self.patience = patience
        self.min_delta = float(min_delta)
        self.n_layers = n_layers
        self.per_layer: dict[str, int] = {}
        self.last_layer = n_layers or 0

        self.layer = 1
        self.stage = 1
        self.best = math.inf
        self.wait = 0
        self.finished = False

    @property
    def n_stages(self) -> int:
        return len(self.lr_factors)

    @property
    def stage_lr(self) -> float:
        """Learning rate of the current stage."""
        return self.lr * self.lr_factors[self.stage - 1]

    def state_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "stage": self.stage, "best": self.best, "wait": self.wait, "finished": self.finished}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.layer = int(state_dict["layer"])
        self.stage = int(state_dict["stage"])
        self.best = float(state_dict["best"])
        self.wait = int(state_dict["wait"])
        self.finished = bool(state_dict["finished"])

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if pl_module.hparams.get("loss") != "mse_last":
            raise ValueError(
                f"layer-wise training trains on the MSE of the active layer, but the module's loss is "
                f"{pl_module.hparams.get('loss')!r}; set model.loss=mse_last."
            )

        network = pl_module.network
        self.per_layer = self._checked_per_layer_parameters(network)

        depth = network.n_layers
        if self.n_layers is not None and self.n_layers > depth:
            raise ValueError(
                f"layer-wise training of {self.n_layers} layers was requested, but the network has {depth}; "
                f"set protocol.n_layers to at most {depth}."
            )
        self.last_layer = self.n_layers or depth

    @staticmethod
    def _checked_per_layer_parameters(network: torch.nn.Module) -> dict[str, int]:
        """Return ``network.per_layer_parameters()``, or raise ``ValueError`` if it is empty or names unknown parameters."""
        per_layer = network.per_layer_parameters()
        if not per_layer:
            raise ValueError(
                f"layer-wise training needs parameters stored per layer, but {type(network).__name__}."
                "per_layer_parameters() lists none; train this network end to end (protocol=end_to_end)."
            )

        unknown = sorted(set(per_layer) - {name for name, _ in network.named_parameters()})
        if unknown:
            raise ValueError(
                f"{type(network).__name__}.per_layer_parameters() lists {unknown}, which are not parameters of the network."
            )
        return per_layer

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if len(trainer.optimizers) != 1:
            raise ValueError(f"layer-wise training needs exactly one optimiser, got {len(trainer.optimizers)}.")
        if trainer.lr_scheduler_configs:
            raise ValueError(
                "layer-wise training sets the learning rate of each stage itself, but the module configured a "
                "learning-rate scheduler; build the module with lr_schedule='constant'."
            )
        decay = [group.get("weight_decay", 0.0) for group in trainer.optimizers[0].param_groups]
        if any(value > 0 for value in decay):
            raise ValueError(
                f"layer-wise training needs weight_decay = 0, got {max(decay)}: Adam's weight decay would move the "
                "entries that a stage freezes. Set model.optim.weight_decay=0."
            )
        pl_module.active_layer = self.layer

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # On a resume the optimiser's state and rate come from the checkpoint; only the rate is set again.
        self._set_lr(trainer)
        pl_module.active_layer = self.layer
        if self.finished:
            log.info("Layer-wise training already finished (layer %d, stage %d); nothing left to train.", self.layer, self.stage)
            trainer.should_stop = True
            return
        log.info(
            "Layer-wise training: layer %d of %d, stage %d of %d at step %d (lr %.3g)",
            self.layer,
            self.last_layer,
            self.stage,
            self.n_stages,
            trainer.global_step,
            self.stage_lr,
        )

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        with torch.no_grad():
            for name, parameter in pl_module.network.named_parameters():
                if parameter.grad is None:
                    continue
                if name not in self.per_layer:
                    if self.stage == 1:
                        parameter.grad.zero_()
                    continue
                start, stop = self.trainable_entries(self.per_layer[name])
                parameter.grad[:start].zero_()
                parameter.grad[stop:].zero_()

    def trainable_entries(self, offset: int) -> tuple[int, int]:
        """Range [start, stop) of the trainable entries, along dimension 0, of a per-layer parameter with ``offset``."""
        entry = self.layer - 1 - offset
        start = entry if self.stage == 1 else 0
        return max(start, 0), max(entry + 1, 0)

    def _is_schedule_check(self, trainer: pl.Trainer) -> bool:
        """Return whether the validation that just ran counts for the schedule: it does during fit, after the sanity check."""
        return trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._is_schedule_check(trainer):
            return
        pl_module.log("layerwise/layer", float(self.layer))
        pl_module.log("layerwise/stage", float(self.stage))

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._is_schedule_check(trainer) or self.finished:
            return
        if ACTIVE_NMSE_KEY not in trainer.callback_metrics:
            raise RuntimeError(
                f"layer-wise training reads {ACTIVE_NMSE_KEY!r} after each validation, but the module did not log it; "
                "the module must log the NMSE of its active_layer."
            )
        value = float(trainer.callback_metrics[ACTIVE_NMSE_KEY])
        if value < self.best - self.min_delta:
            self.best = value
            self.wait = 0
        else:
            self.wait += 1
        if self.wait >= self.patience:
            self._advance(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Training and validation outside this fit use the whole network again.
        pl_module.active_layer = None
        if not self.finished:
            log.warning(
                "Layer-wise training ended at step %d (trainer.max_steps=%d) in layer %d of %d, stage %d of %d, "
                "before its schedule finished; resume with a larger trainer.max_steps to continue.",
                trainer.global_step,
                trainer.max_steps,
                self.layer,
                self.last_layer,
                self.stage,
                self.n_stages,
            )

    def _advance(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """End the current stage: start the next stage or layer, or stop the run after the last one."""
        log.info(
            "Layer-wise training: layer %d stage %d ended at step %d, best validation NMSE of layer %d %.2f dB",
            self.layer,
            self.stage,
            trainer.global_step,
            self.layer,
            self.best,
        )
        if self.stage == self.n_stages and self.layer == self.last_layer:
            self.finished = True
            trainer.should_stop = True
            log.info("Layer-wise training finished after layer %d at step %d", self.layer, trainer.global_step)
            return
        if self.stage < self.n_stages:
            self.stage += 1
        else:
            self.layer += 1
            self.stage = 1
        self.best = math.inf
        self.wait = 0

        optimizer = trainer.optimizers[0]
        # A fresh state per stage: frozen entries then have zero moments, and Adam's bias correction restarts.
        optimizer.state.clear()
        self._set_lr(trainer)
        pl_module.active_layer = self.layer
        log.info(
            "Layer-wise training: layer %d stage %d starts at step %d (lr %.3g)",
            self.layer,
            self.stage,
            trainer.global_step,
            self.stage_lr,
        )

    def _set_lr(self, trainer: pl.Trainer) -> None:
        for group in trainer.optimizers[0].param_groups:
            group["lr"] = self.stage_lr
