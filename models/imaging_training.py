"""``train.py`` for imaging networks: fit on a task, test per stage, write weights and model card."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from models.hub.imaging import (
    export_imaging_model,
    imaging_checkpoints_dir,
    load_imaging_pretrained,
    load_imaging_run,
    publish_imaging,
    round_to_storage,
)
from models.imaging import IMAGING_NETWORKS, ImagingDataModule, ImagingModule, stage_metrics
from models.runs import resume_checkpoint, run_command
from models.trainer import build_trainer
from unrolled.machine import describe_machine
from unrolled.problems.imaging_tasks import IMAGING_TASKS

log = logging.getLogger(__name__)


def is_imaging_config(config: dict[str, Any]) -> bool:
    """Return whether a composed config trains an imaging network (its problem is an imaging task)."""
    return config["problem"].get("name") in IMAGING_TASKS


def build_imaging_module(config: dict[str, Any]) -> ImagingModule:
    """Build the module of a config whose problem is an imaging task."""
    model = config["model"]
    task = {key: value for key, value in config["problem"].items()}
    return ImagingModule(
        network=model["name"],
        n_layers=model["n_layers"],
        task=task,
        network_kwargs=model.get("kwargs") or {},
        init_seed=config["seed"],
        **model["optim"],
    )


def check_imaging_config(config: dict[str, Any]) -> None:
    """Raise ``ValueError`` for options of the sparse-coding training that imaging runs do not support."""
    name = config["model"]["name"]
    if name not in IMAGING_NETWORKS:
        raise ValueError(
            f"problem {config['problem']['name']!r} is an imaging task, which only the networks {sorted(IMAGING_NETWORKS)} "
            f"solve, got model={name}. Pass one of them, or an experiment: ista_net_plus_cs25, admm_net_mri, pgd_cnn_inpainting."
        )
    task_name = config["problem"]["name"]
    if name == "ista_net_plus" and task_name != "block_cs":
        raise ValueError(f"ista_net_plus reconstructs block compressive sensing only (problem=block_cs), got problem={task_name}.")
    kwargs = config["model"].get("kwargs") or {}
    if name == "pgd_cnn" and task_name == "mri" and not (kwargs.get("complex_domain") and not kwargs.get("condition_on_mask", True)):
        raise ValueError(
            "pgd_cnn on problem=mri needs complex images and no image-space mask channel: pass "
            "+model.kwargs.complex_domain=true model.kwargs.condition_on_mask=false."
        )
    if (config.get("protocol") or {}).get("name", "end_to_end") != "end_to_end":
        raise ValueError("imaging networks train end to end only; pass protocol=end_to_end.")
    target = imaging_checkpoints_dir() / f"{config.get('publish_as')}.json"
    if config.get("publish_as") and target.exists() and not config.get("publish_overwrite"):
        raise FileExistsError(
            f"publish_as={config['publish_as']!r} would replace the checkpoint {target}. Pass publish_overwrite=true "
            "to replace it, or another publish_as."
        )
    if config.get("checkpoint_every") is not None or config.get("compile"):
        raise ValueError(
            f"checkpoint_every={config.get('checkpoint_every')} and compile={config.get('compile')}: activation "
            "checkpointing and torch.compile apply to the sparse-coding networks only; pass checkpoint_every=null compile=false."
        )


def load_imaging_initial_weights(module: ImagingModule, source: str) -> dict[str, Any]:
    """Copy the network weights of a run folder or a shipped imaging model into ``module``; return what was loaded.

    The source must hold the same network with the same depth and constructor arguments; ISTA-Net+'s
    fitted initialisation comes with the weights, so it is not refitted.
    """
    loaded = load_imaging_run(source) if Path(source).is_dir() else load_imaging_pretrained(source)
    expected = (module.hparams.network, module.hparams.n_layers, module.hparams.network_kwargs or {})
    found = (loaded.card["network"], loaded.card["n_layers"], loaded.card["network_kwargs"])
    if found != expected:
        raise ValueError(
            f"init_from={source!r} contains network {found[0]} with {found[1]} stages and arguments {found[2]}, "
            f"but this run builds {expected[0]} with {expected[1]} stages and arguments {expected[2]}; they must match."
        )
    module.network.load_state_dict({key: value.float() for key, value in loaded.network.state_dict().items()}, strict=True)
    module.initialised_from_weights = True
    return {"source": source, "sha256": loaded.card["sha256"], "test_psnr_db": loaded.card["test_metrics"]["psnr_db"][-1]}


def train_imaging(
    config: dict[str, Any], run_dir: Path, callbacks: list[pl.Callback], loggers: list[Any], run_record: dict[str, Any]
) -> dict[str, Any]:
    """Fit, test the best checkpoint stage by stage, write weights and card into ``run_dir``; return a summary."""
    check_imaging_config(config)
    module = build_imaging_module(config)
    initialised_from = load_imaging_initial_weights(module, config["init_from"]) if config.get("init_from") else None
    data = ImagingDataModule(module.task, batch_size=config["data"]["batch_size"], steps_per_epoch=config["data"]["steps_per_epoch"])
    trainer = build_trainer(config["trainer"], run_dir, callbacks, loggers)
    resume_from = resume_checkpoint(config, run_dir)
    trainer.fit(module, datamodule=data, ckpt_path=str(resume_from) if resume_from else None)
    training_time = module.training_time_s()
    best = getattr(trainer.checkpoint_callback, "best_model_path", "") or None
    trainer.test(module, datamodule=data, ckpt_path=best, verbose=False)
    if not trainer.is_global_zero:
        return {}

    network = round_to_storage(module.network.cpu().eval())
    test_metrics = stage_metrics(network, module.task.fixed_set("test").to(torch.float32))
    extra = {
        "test_metrics": test_metrics,
        "config": config,
        "command": run_command(),
        "machine": describe_machine(module.device),
        "training": {
            "time_s": round(training_time, 1),
            "global_steps": trainer.global_step,
            "best_checkpoint": Path(best).name if best else None,
            "resumed_from": str(resume_from) if resume_from else None,
            "first_command": run_record["command"],
            "accelerator": type(trainer.accelerator).__name__,
            "init_from": initialised_from,
        },
    }
    card_path = export_imaging_model(run_dir, config["model"]["name"], network, config["model"].get("kwargs") or {}, module.task, extra)
    log.info(
        "Test PSNR after %d stages: %.2f dB, SSIM %.4f; weights and card in %s",
        network.n_layers,
        test_metrics["psnr_db"][-1],
        test_metrics["ssim"][-1],
        run_dir,
    )
    if config.get("publish_as"):
        publish_imaging(run_dir, config["publish_as"])
    return {"card_path": str(card_path), "test_psnr_db": test_metrics["psnr_db"][-1]}
