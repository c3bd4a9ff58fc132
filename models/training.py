"""Training run behind ``train.py``: build the problem, module, data and trainer from a plain config, fit, test, export."""

from __future__ import annotations

import json
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import LearningRateMonitor

from unrolled.problems import build_problem

from models.data import ProblemDataModule
from models.hub import CARD_FILE, WEIGHTS_FILE, checkpoints_dir, export_model, write_atomic
from models.module import UnrolledModule

log = logging.getLogger(__name__)


def last_checkpoint(run_dir: Path) -> Path | None:
    path = run_dir / "checkpoints" / "last.ckpt"
    return path if path.is_file() else None


def build_module(config: dict[str, Any]) -> UnrolledModule:
    model = config["model"]
    return UnrolledModule(
        network=model["name"],
        n_layers=model["n_layers"],
        network_kwargs=model.get("kwargs") or {},
        problem=config["problem"],
        loss=model["loss"],
        **model["optim"],
    )


def train(config: dict[str, Any], run_dir: Path, callbacks: list[pl.Callback], loggers: list[Any]) -> dict[str, Any]:
    """Fit, test on the best checkpoint, export weights and card into ``run_dir``; return the card.

    ``config`` is the resolved Hydra config as plain containers. With ``config["resume"]`` true,
    training continues from ``run_dir/checkpoints/last.ckpt`` (same batches, optimiser and schedule
    state as an uninterrupted run, since batch i of epoch e is drawn from a seed fixed by (e, i)).
    """
    pl.seed_everything(config["seed"], workers=True)
    problem = build_problem(config["problem"])
    module = build_module(config)
    data = ProblemDataModule(problem, **config["data"])
    if not loggers:
        # LearningRateMonitor raises at fit start without a logger, so logger=none would fail otherwise.
        callbacks = [callback for callback in callbacks if not isinstance(callback, LearningRateMonitor)]
    trainer = pl.Trainer(**config["trainer"], callbacks=callbacks, logger=loggers, default_root_dir=str(run_dir))

    resume_from = last_checkpoint(run_dir) if config.get("resume") else None
    if config.get("resume") and resume_from is None:
        raise FileNotFoundError(
            f"resume=true but {run_dir / 'checkpoints' / 'last.ckpt'} does not exist; "
            "pass the folder of the run to resume as hydra.run.dir."
        )
    if resume_from is not None:
        log.info("Resuming from %s", resume_from)

    start = time.perf_counter()
    trainer.fit(module, datamodule=data, ckpt_path=str(resume_from) if resume_from else None)
    training_time = time.perf_counter() - start

    best = getattr(trainer.checkpoint_callback, "best_model_path", "") or None
    trainer.test(module, datamodule=data, ckpt_path=best, verbose=False)
    if not trainer.is_global_zero:
        return {}

    extra = {
        "config": config,
        "command": " ".join(sys.argv),
        "test_metrics": {"split": "test", "n_samples": problem.n_test, "per_layer": module.test_results},
        "training": {
            "time_s": round(training_time, 1),
            "global_steps": trainer.global_step,
            "best_checkpoint": Path(best).name if best else None,
            "resumed_from": str(resume_from) if resume_from else None,
            "accelerator": type(trainer.accelerator).__name__,
        },
    }
    card_path = export_model(run_dir, module.hparams.network, module.network.cpu(), module.hparams.network_kwargs or {}, problem, extra)
    last = module.test_results["nmse_db"][-1]
    log.info("Test NMSE at layer %d: %.2f dB (aggregate); weights and card in %s", module.hparams.n_layers, last, run_dir)

    if config.get("publish_as"):
        publish(run_dir, config["publish_as"])
    return {"card_path": str(card_path), "test_nmse_db": last}


def publish(run_dir: Path, name: str) -> None:
    """Copy a run's weights and card into the checkpoints folder as ``<name>.safetensors`` and ``<name>.json``."""
    target = checkpoints_dir()
    card = json.loads((run_dir / CARD_FILE).read_text())
    card["weights_file"] = f"{name}.safetensors"
    write_atomic(target / card["weights_file"], lambda path: shutil.copyfile(run_dir / WEIGHTS_FILE, path))
    write_atomic(target / f"{name}.json", lambda path: path.write_text(json.dumps(card, indent=2) + "\n"))
    log.info("Published %s to %s", name, target)
