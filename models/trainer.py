"""The Lightning trainer of a run, built from the ``trainer`` group of the config (``conf/trainer/``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from pytorch_lightning.callbacks import LearningRateMonitor
from pytorch_lightning.utilities import rank_zero_only


def build_trainer(options: dict[str, Any], run_dir: Path, callbacks: list[pl.Callback], loggers: list[Any]) -> pl.Trainer:
    """Return ``pl.Trainer(**options)`` writing into ``run_dir``.

    ``options["strategy"]`` is a name (``"auto"``, ``"ddp"``) or a config node with a ``_target_``,
    such as the ``DDPStrategy`` of ``conf/trainer/ddp.yaml``, which is instantiated here.
    Without a logger the :class:`LearningRateMonitor` callbacks are dropped, since they raise at
    fit start when there is nothing to log to.
    """
    options = dict(options)
    if isinstance(options.get("strategy"), dict):
        options["strategy"] = instantiate(options["strategy"])
    if not loggers:
        callbacks = [callback for callback in callbacks if not isinstance(callback, LearningRateMonitor)]
    trainer = pl.Trainer(**options, callbacks=callbacks, logger=loggers, default_root_dir=str(run_dir))
    check_processes_launchable(trainer)
    return trainer


def check_processes_launchable(trainer: pl.Trainer) -> None:
    """Raise if DDP would start its other processes by rerunning the command line of a Hydra sweep.

    Lightning's launcher starts ranks 1 and up by running ``sys.argv`` again, which in a sweep (``-m``)
    runs the whole sweep again (and breaks joblib's workers). Under SLURM or torchrun the processes
    exist already, and sweeps work.
    """
    in_sweep = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    environment = getattr(trainer.strategy, "cluster_environment", None)
    if in_sweep and trainer.world_size > 1 and environment is not None and not environment.creates_processes_externally:
        raise ValueError(
            f"trainer=ddp with {trainer.world_size} processes in a Hydra sweep (-m): Lightning would start the other "
            "processes by rerunning the sweep's command line, which runs the whole sweep again. Run each point as its "
            "own train.py command, or sweep with hydra/launcher=slurm, where SLURM starts the processes."
        )


def first_rank_only(record: logging.LogRecord) -> bool:
    """Logging filter that keeps the records of global rank 0, so that DDP runs print each message once.

    Reads the rank that Lightning sets when the trainer is built (0 before, and in one process).
    """
    return rank_zero_only.rank == 0
