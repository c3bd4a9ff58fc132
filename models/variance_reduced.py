"""Training of unrolled SVRG / SAGA networks on a distribution of finite-sum problems, with Lightning.

The loss of a batch of B training instances is the mean over instances of
:math:`\\log_{10}(F_b(W_K) - F_b^\\star)`, the suboptimality of the last layer on a log scale, so
that instances far from and close to their optimum weigh alike; :math:`F_b^\\star` comes from
Newton's method on each instance. Validation and test report, per layer, the median over the fixed
instances of :math:`\\log_{10}(F - F^\\star)` with the draws fixed by the family's seeds.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from models.data import TrainerEpochSampler
from models.hub import CARD_FILE, sha256_file
from models.module import NonFiniteLossError, TimedTraining, with_lr_schedule
from models.registry import unknown_name_error
from unrolled.layers.variance_reduced import UnrolledSAGA, UnrolledSVRG, UnrolledVarianceReduced
from unrolled.problems.base import EpochSampler, seeded_generator
from unrolled.problems.finite_sum_batch import FiniteSumBatch
from unrolled.problems.instance_family import SubsetInstances, build_family

log = logging.getLogger(__name__)

STOCHASTIC_NETWORKS: dict[str, type[UnrolledVarianceReduced]] = {"unrolled_svrg": UnrolledSVRG, "unrolled_saga": UnrolledSAGA}
LR_SCHEDULES = ("cosine", "constant")
# Suboptimalities below this are rounding noise of the float64 objective (values of order 0.1 to 1).
SUBOPTIMALITY_FLOOR = 1e-15


def build_stochastic_network(name: str, n_layers: int, **kwargs: Any) -> UnrolledVarianceReduced:
    """Build the registered unrolled stochastic network ``name``."""
    if name not in STOCHASTIC_NETWORKS:
        raise unknown_name_error("stochastic network", name, list(STOCHASTIC_NETWORKS))
    return STOCHASTIC_NETWORKS[name](n_layers, **kwargs)


def load_variance_reduced_run(folder: str | Path) -> tuple[UnrolledVarianceReduced, SubsetInstances, dict[str, Any]]:
    """Load the unrolled SVRG/SAGA network that ``train.py`` exported into a run folder, with its instance family and card.

    Only networks of :data:`STOCHASTIC_NETWORKS` are built; the weights are read with safetensors
    (no pickle) after their sha256 is checked against the card. The network is float64, as trained.
    """
    folder = Path(folder)
    card = json.loads((folder / CARD_FILE).read_text())
    network = build_stochastic_network(card["network"], card["n_layers"], **card["network_kwargs"]).double()
    weights = folder / card["weights_file"]
    if sha256_file(weights) != card["sha256"]:
        raise ValueError(f"the sha256 of {weights} does not match its card {folder / CARD_FILE}: the weights were changed or damaged.")
    network.load_state_dict(load_file(weights), strict=True)
    return network, build_family(card["problem"]), card


def log10_suboptimality(instances: FiniteSumBatch, W: Tensor, f_star: Tensor) -> Tensor:
    """Return :math:`\\log_{10}(F_b(W_b) - F_b^\\star)` per instance, floored at :data:`SUBOPTIMALITY_FLOOR`."""
    gap = instances.objectives(W.to(torch.float64)) - f_star
    return torch.log10(gap.clamp_min(SUBOPTIMALITY_FLOOR))


@torch.no_grad()
def layer_suboptimality(network: UnrolledVarianceReduced, family: Any, split: str) -> dict[str, list[float]]:
    """Return per layer (entry k: after k layers) the quartiles of the suboptimality over the fixed ``split`` instances.

    Keys: ``median``, ``q25``, ``q75`` (suboptimalities, not logarithms) and ``grad_evals`` (per-sample
    gradients per instance up to that layer, the initial snapshot or table included).
    """
    instances, _, f_star = family.fixed_set(split)
    index = network.draw(instances, family.draw_generator(split))
    iterates = network(instances, index=index)
    gaps = torch.stack([(instances.objectives(W) - f_star).clamp_min(0.0) for W in iterates])
    quartiles = torch.quantile(gaps, torch.tensor([0.25, 0.5, 0.75], dtype=gaps.dtype), dim=1)
    return {
        "q25": quartiles[0].tolist(),
        "median": quartiles[1].tolist(),
        "q75": quartiles[2].tolist(),
        "grad_evals": network.grad_evals(instances),
    }


class InstanceDataModule(pl.LightningDataModule):
    """Training steps indexed ``epoch·steps_per_epoch + i`` (the module draws the instances from that index); one item for validation and test."""

    def __init__(self, steps_per_epoch: int = 100) -> None:
        super().__init__()
        self.steps_per_epoch = steps_per_epoch

    def train_dataloader(self) -> DataLoader:
        sampler = EpochSampler(self.steps_per_epoch) if self.trainer is None else TrainerEpochSampler(self.steps_per_epoch, self.trainer)
        return DataLoader(range(1 << 62), batch_size=None, sampler=sampler)

    def val_dataloader(self) -> DataLoader:
        return DataLoader([0], batch_size=None)

    def test_dataloader(self) -> DataLoader:
        return DataLoader([0], batch_size=None)


class VarianceReducedModule(TimedTraining):
    """Trains a registered unrolled stochastic network on an instance family.

    Args:
        network: name in :data:`STOCHASTIC_NETWORKS`.
        n_layers: K.
        problem: the family's spec (:meth:`unrolled.problems.instance_family.SubsetInstances.spec`).
        network_kwargs: ``batch_size``, ``step_scale``, ``momentum``, ``snapshot_every``.
        instances_per_step: training instances per step (drawn afresh each step).
        lr: Adam learning rate.
        lr_min_ratio: the cosine schedule decays the rate to ``lr · lr_min_ratio``.
        lr_schedule: ``cosine`` or ``constant``.
    """

    def __init__(
        self,
        network: str,
        n_layers: int,
        problem: dict[str, Any],
        network_kwargs: dict[str, Any] | None = None,
        instances_per_step: int = 32,
        lr: float = 0.05,
        lr_min_ratio: float = 0.01,
        lr_schedule: str = "cosine",
    ) -> None:
        super().__init__()
        if instances_per_step < 1:
            raise ValueError(f"instances_per_step must be >= 1, got {instances_per_step}.")
        if not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"lr must be a positive finite number, got {lr}.")
        if lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {lr_schedule!r}.")
        self.save_hyperparameters()
        self.family = build_family(problem)
        # float64 throughout: the suboptimalities of interest go down to 1e-10.
        self.network = build_stochastic_network(network, n_layers, **(network_kwargs or {})).double()
        self.test_results: dict[str, list[float]] = {}

    def training_step(self, batch: int, batch_idx: int) -> Tensor:
        generator = seeded_generator(self.family.seeds["train"], self.global_rank, int(batch))
        instances = self.family.sample(self.hparams.instances_per_step, generator, "train")
        _, f_star = instances.solve()
        iterates = self.network(instances, index=self.network.draw(instances, generator))
        loss = log10_suboptimality(instances, iterates[-1], f_star).mean()
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"training loss is {loss.item()} at global step {self.global_step}; training stopped and the "
                "checkpoints already written are kept. Lower model.optim.lr."
            )
        self.log("train/loss", loss.float(), prog_bar=True)
        return loss

    def _evaluate(self, split: str) -> dict[str, list[float]]:
        results = layer_suboptimality(self.network, self.family, split)
        last = results["median"][-1]
        if not math.isfinite(last) or not all(torch.isfinite(p).all() for p in self.network.parameters()):
            raise NonFiniteLossError(f"{split} suboptimality is {last} at global step {self.global_step}: the parameters are no longer finite.")
        return results

    def validation_step(self, batch: int, batch_idx: int) -> None:
        results = self._evaluate("val")
        self.log("val/log10_subopt", math.log10(max(results["median"][-1], SUBOPTIMALITY_FLOOR)), prog_bar=True, batch_size=1)
        for k, value in enumerate(results["median"][1:], start=1):
            self.log(f"val/subopt_layer_{k:02d}", value, batch_size=1)

    def test_step(self, batch: int, batch_idx: int) -> None:
        self.test_results = self._evaluate("test")
        self.log("test/log10_subopt", math.log10(max(self.test_results["median"][-1], SUBOPTIMALITY_FLOOR)), batch_size=1)

    def configure_optimizers(self) -> dict[str, Any]:
        return with_lr_schedule(self, torch.optim.Adam(self.network.parameters(), lr=self.hparams.lr))
