r"""Training of unrolled image-reconstruction networks (ISTA-Net+, ADMM-Net, unrolled PGD with a CNN prox).

The networks take the measurements and the operator, ``network(y, operator, noise_std=...,
all_stages=...)``, and return image estimates. The loss is the mean squared error of the last stage
against the ground-truth image (of the complex difference for MRI), plus
``auxiliary_weight`` times the network's ``auxiliary_loss()`` where it has one (ISTA-Net+'s symmetry
constraint, weight 0.01 in Zhang and Ghanem, CVPR 2018). Validation logs the MSE (``val/mse``,
which picks the best checkpoint) and the PSNR of the last stage; the test pass measures PSNR and
SSIM after every stage.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from models.data import TrainerEpochSampler
from models.module import NonFiniteLossError, TimedTraining, check_training_loss, with_lr_schedule
from models.registry import unknown_name_error
from unrolled.image_metrics import psnr, ssim
from unrolled.layers.admm_net import ADMMNet
from unrolled.layers.ista_net import ISTANetPlus, least_squares_init
from unrolled.layers.pgd_cnn import UnrolledPGDCNN
from unrolled.problems.base import EpochSampler, seeded_generator
from unrolled.problems.imaging_tasks import BlockCSTask, ImagingBatch, ImagingTask, build_imaging_task, psnr_crop

log = logging.getLogger(__name__)

IMAGING_NETWORKS: dict[str, type[nn.Module]] = {
    "ista_net_plus": ISTANetPlus,
    "admm_net": ADMMNet,
    "pgd_cnn": UnrolledPGDCNN,
}
LR_SCHEDULES = ("cosine", "constant")
# Blocks used for ISTA-Net+'s least-squares initialisation (the authors fit it on all their training blocks).
Q_INIT_BLOCKS = 20_000


def build_imaging_network(name: str, n_layers: int, **kwargs: Any) -> nn.Module:
    """Build the registered imaging network ``name`` with ``n_layers`` stages."""
    if name not in IMAGING_NETWORKS:
        raise unknown_name_error("imaging network", name, list(IMAGING_NETWORKS))
    return IMAGING_NETWORKS[name](n_layers, **kwargs)


def fit_initialization(network: nn.Module, task: ImagingTask, seed: int) -> None:
    """Set ISTA-Net+'s linear initialisation from training blocks; other networks need none."""
    if not isinstance(network, ISTANetPlus) or not isinstance(task, BlockCSTask):
        return
    patches_per_draw = task.patch_blocks**2
    batch = task.sample(math.ceil(Q_INIT_BLOCKS / patches_per_draw), seeded_generator(seed, 7))
    blocks = batch.operator.to_blocks(batch.x).reshape(-1, task.block_size**2)
    network.set_initialization(least_squares_init(blocks, task.phi).to(torch.float32))


class ImagingBatches(Dataset):
    """Map-style dataset whose item ``index`` is a whole training batch drawn from seed (train, rank, index)."""

    def __init__(self, task: ImagingTask, batch_size: int, rank: int = 0) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        self.task = task
        self.batch_size = batch_size
        self.rank = rank

    def __getitem__(self, index: int) -> ImagingBatch:
        generator = seeded_generator(self.task.seeds["train"], self.rank, index)
        return self.task.sample(self.batch_size, generator).to(torch.float32)


class _FixedSet(Dataset):
    def __init__(self, batch: ImagingBatch) -> None:
        self.batch = batch

    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int) -> ImagingBatch:
        return self.batch


class ImagingDataModule(pl.LightningDataModule):
    """Fresh training batches from the task's train seed; the validation and test sets as one batch each."""

    def __init__(self, task: ImagingTask, batch_size: int = 16, steps_per_epoch: int = 200) -> None:
        super().__init__()
        self.task = task
        self.batch_size = batch_size
        self.steps_per_epoch = steps_per_epoch

    def train_dataloader(self) -> DataLoader:
        rank = 0 if self.trainer is None else self.trainer.global_rank
        dataset = ImagingBatches(self.task, self.batch_size, rank)
        sampler = EpochSampler(self.steps_per_epoch) if self.trainer is None else TrainerEpochSampler(self.steps_per_epoch, self.trainer)
        return DataLoader(dataset, batch_size=None, sampler=sampler, collate_fn=_identity)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(_FixedSet(self.task.fixed_set("val").to(torch.float32)), batch_size=None, collate_fn=_identity)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(_FixedSet(self.task.fixed_set("test").to(torch.float32)), batch_size=None, collate_fn=_identity)

    def transfer_batch_to_device(self, batch: ImagingBatch, device: torch.device, dataloader_idx: int) -> ImagingBatch:
        # The operator stays where it is: its fixed tensors follow the input's device when applied.
        return ImagingBatch(batch.x.to(device), batch.y.to(device), batch.operator, batch.noise_std.to(device), batch.crop)

    def state_dict(self) -> dict[str, Any]:
        return {"batch_size": self.batch_size, "steps_per_epoch": self.steps_per_epoch}


def _identity(batch: ImagingBatch) -> ImagingBatch:
    return batch


@torch.no_grad()
def stage_metrics(network: nn.Module, batch: ImagingBatch) -> dict[str, Any]:
    """Return PSNR and SSIM (dB, and unitless) after every stage, mean over images and per image."""
    estimates = network(batch.y, batch.operator, noise_std=batch.noise_std, all_stages=True)
    psnr_stages, ssim_stages = [], []
    for estimate in estimates:
        scored, target = psnr_crop(batch, estimate)
        psnr_stages.append(psnr(scored.float(), target.float()))
        ssim_stages.append(ssim(scored.float(), target.float()))
    return {
        "psnr_db": [float(values.mean()) for values in psnr_stages],
        "ssim": [float(values.mean()) for values in ssim_stages],
        "psnr_db_per_image": psnr_stages[-1].tolist(),
        "ssim_per_image": ssim_stages[-1].tolist(),
    }


class ImagingModule(TimedTraining):
    """Supervised training of an unrolled imaging network on a task's fresh batches.

    Every constructor argument is plain data, so Lightning checkpoints load with
    ``torch.load(weights_only=True)``.

    Args:
        network: name in :data:`IMAGING_NETWORKS`.
        n_layers: number of stages.
        task: task spec (:meth:`ImagingTask.spec`).
        network_kwargs: extra constructor arguments of the network.
        lr, weight_decay, lr_min_ratio, lr_schedule: Adam and its cosine decay, as for the sparse-coding networks.
        auxiliary_weight: weight of the network's ``auxiliary_loss()`` (ISTA-Net+'s symmetry loss).
        init_seed: seed of the training blocks that fit ISTA-Net+'s linear initialisation.
    """

    def __init__(
        self,
        network: str,
        n_layers: int,
        task: dict[str, Any],
        network_kwargs: dict[str, Any] | None = None,
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        lr_min_ratio: float = 0.01,
        lr_schedule: str = "cosine",
        auxiliary_weight: float = 0.01,
        init_seed: int = 0,
    ) -> None:
        super().__init__()
        if not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"lr must be a positive finite number, got {lr}.")
        if lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {lr_schedule!r}.")
        if auxiliary_weight < 0:
            raise ValueError(f"auxiliary_weight must be >= 0, got {auxiliary_weight}.")
        self.save_hyperparameters()
        self.task = build_imaging_task(task)
        self.network = build_imaging_network(network, n_layers, **(network_kwargs or {}))
        self.test_results: dict[str, Any] | None = None
        # Set by init_from: the weights, ISTA-Net+'s fitted initialisation included, come from another run.
        self.initialised_from_weights = False

    def setup(self, stage: str) -> None:
        # ISTA-Net+'s initialisation is fitted before the first step. It is part of the weights, so on
        # resume the checkpoint, which Lightning loads after setup, replaces the refitted one.
        if stage == "fit" and self.global_step == 0 and not self.initialised_from_weights:
            fit_initialization(self.network, self.task, self.hparams.init_seed)

    def forward(self, batch: ImagingBatch, all_stages: bool = False) -> Tensor | list[Tensor]:
        return self.network(batch.y, batch.operator, noise_std=batch.noise_std, all_stages=all_stages)

    def training_step(self, batch: ImagingBatch, batch_idx: int) -> Tensor:
        estimate = self(batch)
        mse = (estimate - batch.x).abs().square().mean()
        loss = mse
        auxiliary = getattr(self.network, "auxiliary_loss", None)
        if auxiliary is not None and self.hparams.auxiliary_weight > 0:
            loss = loss + self.hparams.auxiliary_weight * auxiliary()
        check_training_loss(self, loss)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/mse", mse)
        return loss

    def validation_step(self, batch: ImagingBatch, batch_idx: int) -> None:
        estimate = self(batch)
        mse = (estimate - batch.x).abs().square().mean()
        if not torch.isfinite(mse) or not all(torch.isfinite(p).all() for p in self.network.parameters()):
            raise NonFiniteLossError(
                f"validation MSE is {mse.item()} at global step {self.global_step}: the parameters are no "
                "longer finite. Training stopped; the checkpoints already written are kept."
            )
        scored, target = psnr_crop(batch, estimate)
        self.log("val/mse", mse, prog_bar=False, batch_size=len(batch))
        self.log("val/psnr", psnr(scored.float(), target.float()).mean(), prog_bar=True, batch_size=len(batch))

    def test_step(self, batch: ImagingBatch, batch_idx: int) -> None:
        self.test_results = stage_metrics(self.network, batch)
        self.log("test/psnr", self.test_results["psnr_db"][-1], batch_size=len(batch))
        self.log("test/ssim", self.test_results["ssim"][-1], batch_size=len(batch))

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = torch.optim.Adam(self.network.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        return with_lr_schedule(self, optimizer)
