"""Export trained networks as a ``.safetensors`` weights file beside a JSON model card, and measure the card's test metrics."""

from __future__ import annotations

import copy
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save

from models.hub.loading import CARD_FILE, CARD_FORMAT, WEIGHTS_FILE, checkpoints_dir, load_pretrained, sha256_file
from unrolled.files import write_atomic
from unrolled.layers import UnrolledISTA
from unrolled.machine import describe_machine
from unrolled.problems import Problem
from unrolled.report.evaluate import evaluate_layers


def export_model(
    folder: Path,
    network_name: str,
    network: UnrolledISTA,
    network_kwargs: dict[str, Any],
    problem: Problem,
    extra: dict[str, Any],
    stem: str | None = None,
) -> Path:
    """Write ``<stem>.safetensors`` and ``<stem>.json`` (default: model.safetensors and model_card.json) atomically.

    The card records the network name and constructor arguments, the problem spec with its seeds, the
    sha256 of the weights and everything in ``extra`` (training config, test metrics per layer,
    training time, hardware). The weights include the operator A (a buffer of the network).
    Returns the card's path.
    """
    folder = Path(folder)
    weights_path = folder / (f"{stem}.safetensors" if stem else WEIGHTS_FILE)
    card_path = folder / (f"{stem}.json" if stem else CARD_FILE)
    tensors = {key: value.detach().cpu().contiguous() for key, value in network.state_dict().items()}
    write_atomic(weights_path, save(tensors))
    card = {
        "format": CARD_FORMAT,
        "network": network_name,
        "n_layers": network.n_layers,
        "network_kwargs": network_kwargs,
        "problem": problem.spec(),
        "weights_file": weights_path.name,
        "sha256": sha256_file(weights_path),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": describe_machine("cpu"),
        **extra,
    }
    write_atomic(card_path, (json.dumps(card, indent=2) + "\n").encode())
    return card_path


def measure_test_metrics(network: UnrolledISTA, problem: Problem) -> dict[str, Any]:
    """Per-layer test metrics of ``network`` for its model card, computed on a float64 copy of it.

    float64 makes the figures reproducible to far below 0.01 dB on any machine and thread count. In
    float32 the rounding of a matrix product depends on the thread count, and support selection turns
    a flipped tie into changes of up to 0.25 dB in the deep layers (measured on ALISTA-16).
    """
    y, x = problem.fixed_set("test")
    network64 = copy.deepcopy(network).to("cpu", torch.float64)
    per_layer = evaluate_layers(network64, problem, y, x)
    metrics = {
        "nmse_db": [layer.nmse_db for layer in per_layer],
        "nmse_db_per_sample": [layer.nmse_db_per_sample for layer in per_layer],
    }
    if per_layer[0].psnr_db is not None:
        metrics["psnr_db"] = [layer.psnr_db for layer in per_layer]
    return {"split": "test", "n_samples": int(y.shape[0]), "dtype": "float64", "per_layer": metrics}


def refresh_test_metrics(name: str) -> dict[str, Any]:
    """Re-measure the test metrics of the shipped model ``name`` and rewrite its card atomically (weights unchanged)."""
    loaded = load_pretrained(name)
    card = {**loaded.card, "test_metrics": measure_test_metrics(loaded.network, loaded.problem)}
    card["test_metrics"]["measured"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    write_atomic(checkpoints_dir() / f"{name}.json", (json.dumps(card, indent=2) + "\n").encode())
    return card
