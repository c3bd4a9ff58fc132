"""``train.py`` for imaging networks: fit on a task, test per stage, write weights and model card."""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from safetensors.torch import load_file, save
from torch import nn

from models.hub.loading import CARD_FILE, WEIGHTS_FILE, sha256_file
from models.imaging import IMAGING_NETWORKS, ImagingDataModule, ImagingModule, build_imaging_network, stage_metrics
from models.runs import publish, resume_checkpoint, run_command
from models.trainer import build_trainer
from unrolled.files import write_atomic
from unrolled.machine import describe_machine
from unrolled.problems.imaging_tasks import IMAGING_TASKS, ImagingTask, build_imaging_task

log = logging.getLogger(__name__)

IMAGING_CARD_FORMAT = "unrolled-zoo/imaging-card/1"
REQUIRED_IMAGING_FIELDS = ("network", "n_layers", "network_kwargs", "task", "weights_file", "sha256")


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
            f"solve, got model={name}. Pass for example model=ista_net_plus, or use experiment=ista_net_plus_cs25."
        )
    if config.get("init_from"):
        raise ValueError(f"init_from={config['init_from']!r} is not supported for imaging networks yet; pass init_from=null.")
    if (config.get("protocol") or {}).get("name", "end_to_end") != "end_to_end":
        raise ValueError("imaging networks train end to end only; pass protocol=end_to_end.")
    if config.get("checkpoint_every") is not None or config.get("compile"):
        raise ValueError(
            f"checkpoint_every={config.get('checkpoint_every')} and compile={config.get('compile')}: activation "
            "checkpointing and torch.compile apply to the sparse-coding networks only; pass checkpoint_every=null compile=false."
        )


def export_imaging_model(
    folder: Path, network_name: str, network: nn.Module, network_kwargs: dict[str, Any], task: ImagingTask, extra: dict[str, Any]
) -> Path:
    """Write ``model.safetensors`` and ``model_card.json`` atomically into ``folder``; return the card's path."""
    weights_path = Path(folder) / WEIGHTS_FILE
    tensors = {key: value.detach().cpu().contiguous() for key, value in network.state_dict().items()}
    write_atomic(weights_path, save(tensors))
    card = {
        "format": IMAGING_CARD_FORMAT,
        "network": network_name,
        "n_layers": network.n_layers,
        "network_kwargs": network_kwargs,
        "task": task.spec(),
        "weights_file": weights_path.name,
        "sha256": sha256_file(weights_path),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **extra,
    }
    card_path = Path(folder) / CARD_FILE
    write_atomic(card_path, (json.dumps(card, indent=2) + "\n").encode())
    return card_path


def read_imaging_card(card_path: Path) -> dict[str, Any]:
    """Read and check an imaging model card without opening its weights; only registered networks and tasks pass."""
    card = json.loads(Path(card_path).read_text())
    if not isinstance(card, dict) or card.get("format") != IMAGING_CARD_FORMAT:
        raise ValueError(f"{card_path} is not an imaging model card (format {IMAGING_CARD_FORMAT!r}).")
    missing = [field for field in REQUIRED_IMAGING_FIELDS if field not in card]
    if missing:
        raise ValueError(f"imaging model card {card_path} has no {', '.join(missing)}; re-export the model.")
    if card["network"] not in IMAGING_NETWORKS:
        raise ValueError(
            f"imaging model card {card_path} names the network {card['network']!r}, which is not registered "
            f"({', '.join(sorted(IMAGING_NETWORKS))}); nothing was instantiated."
        )
    if card["task"].get("name") not in IMAGING_TASKS:
        raise ValueError(f"imaging model card {card_path} names the unknown task {card['task'].get('name')!r}; nothing was instantiated.")
    if Path(card["weights_file"]).name != card["weights_file"]:
        raise ValueError(f"weights_file in {card_path} must be a plain file name, got {card['weights_file']!r}.")
    return card


def load_imaging_card(card_path: Path) -> tuple[nn.Module, ImagingTask, dict[str, Any]]:
    """Load the imaging network of a card after checking the card and the sha256 of its weights (no pickle)."""
    card = read_imaging_card(card_path)
    weights_path = Path(card_path).parent / card["weights_file"]
    actual = sha256_file(weights_path)
    if actual != card["sha256"]:
        raise ValueError(
            f"sha256 of {weights_path} is {actual}, but its card {card_path} records {card['sha256']}; "
            "the file is corrupt or was replaced. Nothing was loaded."
        )
    network = build_imaging_network(card["network"], card["n_layers"], **card["network_kwargs"])
    network.load_state_dict(load_file(str(weights_path)), strict=True)
    network.eval()
    return network, build_imaging_task(card["task"]), card


def train_imaging(
    config: dict[str, Any], run_dir: Path, callbacks: list[pl.Callback], loggers: list[Any], run_record: dict[str, Any]
) -> dict[str, Any]:
    """Fit, test the best checkpoint stage by stage, write weights and card into ``run_dir``; return a summary."""
    check_imaging_config(config)
    module = build_imaging_module(config)
    data = ImagingDataModule(module.task, batch_size=config["data"]["batch_size"], steps_per_epoch=config["data"]["steps_per_epoch"])
    trainer = build_trainer(config["trainer"], run_dir, callbacks, loggers)
    resume_from = resume_checkpoint(config, run_dir)
    trainer.fit(module, datamodule=data, ckpt_path=str(resume_from) if resume_from else None)
    training_time = module.training_time_s()
    best = getattr(trainer.checkpoint_callback, "best_model_path", "") or None
    trainer.test(module, datamodule=data, ckpt_path=best, verbose=False)
    if not trainer.is_global_zero:
        return {}

    network = module.network.cpu().eval()
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
        publish(run_dir, config["publish_as"])
    return {"card_path": str(card_path), "test_psnr_db": test_metrics["psnr_db"][-1]}
