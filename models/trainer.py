"""The Lightning trainer of a run, built from the ``trainer`` group of the config (``conf/trainer/``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
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
    return pl.Trainer(**options, callbacks=callbacks, logger=loggers, default_root_dir=str(run_dir))


def first_rank_only(record: logging.LogRecord) -> bool:
    """Logging filter that keeps the records of global rank 0, so that DDP runs print each message once.

    Reads the rank that Lightning sets when the trainer is built (0 before, and in one process).
    """
    return rank_zero_only.rank == 0
