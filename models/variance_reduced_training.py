"""``train.py`` for unrolled stochastic networks: fit on an instance family, test, compare with the classical method, export."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from safetensors.torch import save

from models.hub import CARD_FILE, WEIGHTS_FILE, sha256_file
from models.runs import resume_checkpoint, run_command
from models.trainer import build_trainer
from models.variance_reduced import STOCHASTIC_NETWORKS, InstanceDataModule, VarianceReducedModule
from unrolled.files import write_atomic
from unrolled.machine import describe_machine
from unrolled.report.stochastic import compare_with_classical, render_comparison_png

log = logging.getLogger(__name__)

CARD_FORMAT = "unrolled-zoo/variance-reduced-card/1"
# Median test suboptimality against layers and against the classical method's steps.
REPORT_FIGURE = "report.png"


def build_variance_reduced_module(config: dict[str, Any]) -> VarianceReducedModule:
    """Build the module of a config whose problem is an instance family."""
    model = config["model"]
    return VarianceReducedModule(
        network=model["name"],
        n_layers=model["n_layers"],
        problem=config["problem"],
        network_kwargs=model.get("kwargs") or {},
        instances_per_step=model["instances_per_step"],
        **model["optim"],
    )


def train_variance_reduced(
    config: dict[str, Any], run_dir: Path, callbacks: list[pl.Callback], loggers: list[Any], run_record: dict[str, Any]
) -> dict[str, Any]:
    """Fit, test on the best checkpoint, compare with the classical method, and write weights, card and ``report.png`` into ``run_dir``."""
    if config["model"]["name"] not in STOCHASTIC_NETWORKS:
        raise ValueError(
            f"problem {config['problem']['name']!r} is an instance family of finite sums, which only the networks "
            f"{sorted(STOCHASTIC_NETWORKS)} solve, got model={config['model']['name']}. Pass model=unrolled_saga or model=unrolled_svrg."
        )
    # Neither is implemented for these networks yet; refusing beats a run that silently ignores them.
    if config.get("init_from"):
        raise ValueError(f"init_from={config['init_from']!r} is not supported for unrolled SVRG/SAGA yet; pass init_from=null.")
    if (config.get("protocol") or {}).get("name", "end_to_end") != "end_to_end":
        raise ValueError("unrolled SVRG/SAGA train end to end only; pass protocol=end_to_end.")
    if config.get("checkpoint_every") is not None or config.get("compile"):
        raise ValueError(
            f"checkpoint_every={config.get('checkpoint_every')} and compile={config.get('compile')}: activation "
            "checkpointing and torch.compile apply to the sparse-coding networks only; pass checkpoint_every=null compile=false."
        )
    if config.get("publish_as"):
        raise ValueError(
            f"publish_as={config['publish_as']!r}: the zoo does not hold unrolled stochastic networks yet; "
            "the run's weights and card stay in its folder. Pass publish_as=null."
        )
    module = build_variance_reduced_module(config)
    data = InstanceDataModule(steps_per_epoch=config["data"]["steps_per_epoch"])
    trainer = build_trainer(config["trainer"], run_dir, callbacks, loggers)
    resume_from = resume_checkpoint(config, run_dir)
    trainer.fit(module, datamodule=data, ckpt_path=str(resume_from) if resume_from else None)
    training_time = module.training_time_s()
    best = getattr(trainer.checkpoint_callback, "best_model_path", "") or None
    trainer.test(module, datamodule=data, ckpt_path=best, verbose=False)
    if not trainer.is_global_zero:
        return {}

    network = module.network.cpu()
    instances, _, f_star = module.family.fixed_set("test")
    comparison = compare_with_classical(
        network,
        instances,
        f_star,
        module.test_results["median"],
        max_steps=config["model"]["classical_max_steps"],
        generator_seed=module.family.seeds["test"] + 1,
    )
    weights_path = run_dir / WEIGHTS_FILE
    write_atomic(weights_path, save({key: value.detach().contiguous() for key, value in network.state_dict().items()}))
    card = {
        "format": CARD_FORMAT,
        "network": module.hparams.network,
        "n_layers": network.n_layers,
        "network_kwargs": module.hparams.network_kwargs or {},
        "problem": module.family.spec(),
        "weights_file": weights_path.name,
        "sha256": sha256_file(weights_path),
        "learned": {"step_scales": network.step_scales().tolist(), "momenta": None if network.momenta() is None else network.momenta().tolist()},
        "test_metrics": {"per_layer": module.test_results, "classical": comparison},
        "config": config,
        "command": run_command(),
        "machine": describe_machine(module.device),
        "training": {
            "time_s": round(training_time, 1),
            "global_steps": trainer.global_step,
            "best_checkpoint": Path(best).name if best else None,
            "resumed_from": str(resume_from) if resume_from else None,
            "first_command": run_record["command"],
        },
    }
    write_atomic(run_dir / CARD_FILE, (json.dumps(card, indent=2) + "\n").encode())
    write_atomic(run_dir / REPORT_FIGURE, render_comparison_png(module.hparams.network, module.test_results["median"], comparison))
    last = module.test_results["median"][-1]
    needed = comparison["steps_needed"][-1]
    log.info(
        "Test median suboptimality after %d layers: %.3g; the classical method with a tuned step needs %s steps",
        network.n_layers,
        last,
        needed if needed is not None else f"more than {comparison['max_steps']}",
    )
    return {"card_path": str(run_dir / CARD_FILE), "test_log10_subopt": module.test_results["median"][-1]}
