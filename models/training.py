"""Training run behind ``train.py``: build the problem, module, data and trainer from a plain config, fit, test, export."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from models.data import ProblemDataModule
from models.hub import CARD_FILE, WEIGHTS_FILE, checkpoints_dir, choose_storage, export_model, load_pretrained, load_run
from models.layerwise import LayerwiseTraining
from models.module import UnrolledModule
from models.runs import check_publish_target, publish, resume_checkpoint, run_command
from models.trainer import build_trainer
from models.imaging_training import is_imaging_config, train_imaging
from models.variance_reduced import STOCHASTIC_NETWORKS
from models.variance_reduced_training import train_variance_reduced
from unrolled.files import write_atomic
from unrolled.machine import describe_machine
from unrolled.problems import build_problem
from unrolled.problems.instance_family import FAMILIES

log = logging.getLogger(__name__)


PROTOCOLS = ("end_to_end", "layerwise")
# Runs recorded before the protocol group existed trained end to end.
DEFAULT_PROTOCOL = {"name": "end_to_end"}


def protocol_name(config: dict[str, Any]) -> str:
    """Name of the training protocol of ``config`` (``config["protocol"]["name"]``), checked against :data:`PROTOCOLS`."""
    name = (config.get("protocol") or DEFAULT_PROTOCOL).get("name")
    if name not in PROTOCOLS:
        raise ValueError(f"protocol.name must be one of {PROTOCOLS}, got {name!r}.")
    return name


def build_module(config: dict[str, Any]) -> UnrolledModule:
    """Build the module of ``config``, without a learning-rate schedule under the layer-wise protocol, which sets the rate per stage."""
    model = config["model"]
    compile_network = config.get("compile", False)
    if not isinstance(compile_network, bool):
        raise ValueError(f"compile must be true or false, got {compile_network!r}.")
    optim = dict(model["optim"])
    if protocol_name(config) == "layerwise":
        optim["lr_schedule"] = "constant"
    return UnrolledModule(
        network=model["name"],
        n_layers=model["n_layers"],
        network_kwargs=model.get("kwargs") or {},
        problem=config["problem"],
        loss=model["loss"],
        lasso_reg=model.get("lasso_reg"),
        checkpoint_every=config.get("checkpoint_every"),
        compile=compile_network,
        **optim,
    )


def build_protocol_callbacks(config: dict[str, Any]) -> list[pl.Callback]:
    """Callbacks of the training protocol of ``config``: none end to end, :class:`LayerwiseTraining` layer-wise."""
    if protocol_name(config) == "end_to_end":
        return []
    options = {key: value for key, value in config["protocol"].items() if key != "name"}
    return [LayerwiseTraining(**options)]


def load_initial_weights(module: UnrolledModule, source: str) -> dict[str, Any]:
    """Start from the network weights of ``source``: a run folder, a pretrained name or a Lightning ``.ckpt`` file.

    Used to fine-tune in stages (for example a second stage at a lower learning rate). The source
    must contain the same network on the same problem, because its weights were learned for that
    problem's operator A. Returns the provenance of the source
    (its command and training record, earlier stages included) for this run's card.
    """
    path = Path(source)
    if path.suffix == ".ckpt":
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        hparams = checkpoint["hyper_parameters"]
        network, problem = hparams["network"], hparams["problem"]
        state = {
            key.removeprefix("network."): value for key, value in checkpoint["state_dict"].items() if key.startswith("network.")
        }
        provenance = {"source": source, "global_step": checkpoint.get("global_step")}
    else:
        loaded = load_run(path) if path.is_dir() else load_pretrained(source)
        network, problem = loaded.card["network"], loaded.card["problem"]
        state = loaded.network.state_dict()
        provenance = {"source": source, "command": loaded.card.get("command"), "training": loaded.card.get("training")}
    if network != module.hparams.network or problem != module.problem.spec():
        raise ValueError(
            f"init_from={source!r} contains network {network!r} on problem {problem}, but this run trains "
            f"{module.hparams.network!r} on {module.problem.spec()}; start from a run of the same network and problem."
        )
    module.network.load_state_dict(state, strict=True)
    log.info("Initialised the network from %s", source)
    return provenance


RUN_CONFIG_FILE = "run_config.json"
# Settings that a resumed run may choose anew: the thread count, compilation and activation
# checkpointing change speed and memory, not results, and publish_overwrite only where the files go.
RESUME_MAY_CHANGE = ("resume", "num_threads", "compile", "checkpoint_every", "publish_overwrite")
# Trainer options that conf/trainer gained after runs were recorded, with the values those runs used.
OPTIONS_ADDED_LATER = {"trainer.num_nodes": 1, "trainer.precision": "32-true"}
# Variables through which torchrun, Lightning's DDP launcher and SLURM give a process its rank.
RANK_VARIABLES = ("RANK", "GROUP_RANK", "NODE_RANK", "LOCAL_RANK", "SLURM_PROCID")


def is_first_process() -> bool:
    """Return whether this process has global rank 0 (or is the only one), from the launchers' variables.

    Readable before the trainer exists, which is when the run's config is recorded: under DDP the
    other ranks run the same script, and only rank 0 may write the run's files.
    """
    return all(os.environ.get(name, "0") == "0" for name in RANK_VARIABLES)


def _flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def resume_command(command: str, run_dir: Path) -> str:
    """Return ``command`` with ``resume=true``, and with ``hydra.run.dir`` pointing at ``run_dir`` unless it already does."""
    if "hydra.run.dir=" not in command:
        command = f"{command} hydra.run.dir={run_dir}"
    return f"{command} resume=true"


def record_or_check_run_config(config: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """Save the run's config in ``run_config.json`` at its first start; on resume, raise unless it is unchanged.

    A resumed run must repeat the overrides of the original command: a different ``max_steps`` would
    change the learning-rate schedule, a different problem the data. Returns the saved record
    (``command`` and ``config``).
    """
    path = run_dir / RUN_CONFIG_FILE
    # Under DDP the other ranks only read the record; their command line also carries the launcher's overrides.
    current = {key: value for key, value in config.items() if key not in RESUME_MAY_CHANGE}
    if not config.get("resume") or not path.is_file():
        record = {"command": run_command(), "config": current}
        if is_first_process():
            write_atomic(path, (json.dumps(record, indent=2) + "\n").encode())
        return record

    record = json.loads(path.read_text())
    saved_config = {"protocol": DEFAULT_PROTOCOL} | record["config"]
    saved, new = _flatten(saved_config), _flatten(current)
    # Records written before these trainer options existed ran with their defaults.
    saved = {key: value for key, value in OPTIONS_ADDED_LATER.items() if key in new} | saved
    changed = sorted(key for key in saved.keys() | new.keys() if saved.get(key) != new.get(key))
    if protocol_name(saved_config) == protocol_name(current) == "layerwise":
        # The layer-wise schedule does not depend on the cap, so a capped run may resume with a larger one.
        changed = [key for key in changed if key != "trainer.max_steps"]
    if changed:
        details = "; ".join(f"{key}: run started with {saved.get(key)!r}, got {new.get(key)!r}" for key in changed)
        raise ValueError(
            f"resume=true needs the config the run started with, but {details}. "
            f"Repeat the original overrides: {resume_command(record['command'], run_dir)}"
        )
    return record


def train(config: dict[str, Any], run_dir: Path, callbacks: list[pl.Callback], loggers: list[Any]) -> dict[str, Any]:
    """Fit, test on the best checkpoint, export weights and card into ``run_dir``; return the card.

    ``config`` is the resolved Hydra config as plain containers. With ``config["resume"]`` true,
    training continues from ``run_dir/checkpoints/last.ckpt`` (same batches, optimiser and schedule
    state as an uninterrupted run, since batch i of epoch e is drawn from a seed fixed by (e, i)).
    """
    check_publish_target(config)
    run_record = record_or_check_run_config(config, run_dir)
    pl.seed_everything(config["seed"], workers=True)
    if config["problem"]["name"] in FAMILIES:
        return train_variance_reduced(config, run_dir, callbacks, loggers, run_record)
    if is_imaging_config(config):
        return train_imaging(config, run_dir, callbacks, loggers, run_record)
    if config["model"]["name"] in STOCHASTIC_NETWORKS:
        raise ValueError(
            f"model={config['model']['name']} trains on an instance family of finite sums, not on problem "
            f"{config['problem']['name']!r}: add problem=breast_cancer_subsets, or use experiment=saga_breast_cancer / svrg_breast_cancer."
        )
    problem = build_problem(config["problem"])
    module = build_module(config)
    initialised_from = load_initial_weights(module, config["init_from"]) if config.get("init_from") else None
    data = ProblemDataModule(problem, **config["data"])
    protocol_callbacks = build_protocol_callbacks(config)
    callbacks = [*callbacks, *protocol_callbacks]
    trainer = build_trainer(config["trainer"], run_dir, callbacks, loggers)
    resume_from = resume_checkpoint(config, run_dir)
    trainer.fit(module, datamodule=data, ckpt_path=str(resume_from) if resume_from else None)
    # Read before trainer.test, which loads the best checkpoint and its recorded time.
    training_time = module.training_time_s()
    # Read before trainer.test, which restores the callbacks' state of the best checkpoint.
    protocol_states = {type(callback).__name__: callback.state_dict() for callback in protocol_callbacks}

    best = getattr(trainer.checkpoint_callback, "best_model_path", "") or None
    trainer.test(module, datamodule=data, ckpt_path=best, verbose=False)
    if not trainer.is_global_zero:
        return {}

    storage = choose_storage(module.network.cpu(), problem)
    test_metrics = storage.test_metrics
    extra = {
        "config": config,
        "command": run_command(),
        "machine": describe_machine(module.device),
        "test_metrics": test_metrics,
        "training": {
            "time_s": round(training_time, 1),
            "global_steps": trainer.global_step,
            "best_checkpoint": Path(best).name if best else None,
            "resumed_from": str(resume_from) if resume_from else None,
            "first_command": run_record["command"],
            "init_from": initialised_from,
            "accelerator": type(trainer.accelerator).__name__,
            "protocol": protocol_name(config),
        },
        "storage": storage.card_record(),
    }
    if "LayerwiseTraining" in protocol_states:
        # Where the schedule ended: finished is false when trainer.max_steps cut it short.
        extra["training"]["layerwise"] = protocol_states["LayerwiseTraining"]
    card_path = export_model(
        run_dir,
        module.hparams.network,
        # The network as trained: export_model rounds it with the codec exactly as choose_storage did.
        module.network,
        module.hparams.network_kwargs or {},
        problem,
        extra,
        codec=storage.codec,
    )
    last = test_metrics["per_layer"]["nmse_db"][-1]
    log.info("Test NMSE at layer %d: %.2f dB (aggregate); weights and card in %s", module.hparams.n_layers, last, run_dir)

    if config.get("publish_as"):
        publish(run_dir, config["publish_as"])
    return {"card_path": str(card_path), "test_nmse_db": last}


def train_from_config(cfg: DictConfig, run_dir: Path, extra_callbacks: list[pl.Callback] = ()) -> dict[str, Any]:
    """Instantiate the callbacks and loggers of a composed Hydra config, then :func:`train` on the rest as plain data."""
    if cfg.get("num_threads"):
        torch.set_num_threads(cfg.num_threads)
    callbacks = [instantiate(node) for node in (cfg.get("callbacks") or {}).values()] + list(extra_callbacks)
    loggers = [instantiate(node) for node in (cfg.get("logger") or {}).values()]
    config = OmegaConf.to_container(cfg, resolve=True)
    config.pop("callbacks", None)
    config.pop("logger", None)
    return train(config, run_dir, callbacks, loggers)
