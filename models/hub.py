"""Export, list and load trained networks: a ``.safetensors`` weights file beside a JSON model card.

Loading never unpickles anything: weights come from safetensors, the card is JSON, the sha256 of the
weights must match the card before any tensor is read, and the network class is looked up in
:data:`models.registry.NETWORKS` by name, so a card cannot make the loader build an unregistered class.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save

from models.registry import build_network, unknown_name_error
from unrolled.files import write_atomic
from unrolled.layers import UnrolledISTA
from unrolled.machine import describe_machine
from unrolled.problems import Problem, build_problem
from unrolled.report.evaluate import evaluate_layers

log = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "model_card.json"
CHECKPOINTS_ENV = "UNROLLED_ZOO_CHECKPOINTS"
CARD_FORMAT = 1


@dataclass
class LoadedModel:
    """A network with its card and the problem it was trained on (the test set regenerates from the seeds)."""

    name: str
    network: UnrolledISTA
    problem: Problem
    card: dict[str, Any]


def checkpoints_dir() -> Path:
    """Folder of the shipped checkpoints: ``$UNROLLED_ZOO_CHECKPOINTS`` or ``checkpoints/`` of this checkout."""
    return Path(os.environ.get(CHECKPOINTS_ENV, Path(__file__).resolve().parents[1] / "checkpoints"))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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


def load_card_and_network(card_path: Path, name: str) -> LoadedModel:
    """Load the network described by ``card_path`` after checking the sha256 of its weights file."""
    card = json.loads(Path(card_path).read_text())
    if Path(card["weights_file"]).name != card["weights_file"] or card["weights_file"] == "..":
        raise ValueError(f"weights_file in {card_path} must be a plain file name, got {card['weights_file']!r}.")
    weights_path = Path(card_path).parent / card["weights_file"]
    actual = sha256_file(weights_path)
    if actual != card["sha256"]:
        raise ValueError(
            f"sha256 of {weights_path} is {actual}, but its card {card_path} records {card['sha256']}; "
            "the file is corrupt or was replaced. Nothing was loaded: restore the file or re-export the model."
        )
    state = load_file(str(weights_path))
    network = build_network(card["network"], state["A"], card["n_layers"], **card["network_kwargs"])
    network.load_state_dict(state, strict=True)
    network.eval()
    return LoadedModel(name=name, network=network, problem=build_problem(card["problem"]), card=card)


def load_run(folder: str | Path) -> LoadedModel:
    """Load the model exported by ``train.py`` into its run folder."""
    folder = Path(folder)
    card_path = folder / CARD_FILE
    if not card_path.is_file():
        raise FileNotFoundError(f"no {CARD_FILE} in {folder}; expected the run folder of a finished train.py run.")
    return load_card_and_network(card_path, folder.name)


def list_pretrained() -> list[str]:
    """Names of the shipped pretrained models (``model.tag``), sorted."""
    return sorted(path.stem for path in checkpoints_dir().glob("*.json"))


def load_pretrained(name: str) -> LoadedModel:
    """Load the shipped model ``name`` (see :func:`list_pretrained`) offline, with sha256 verification."""
    known = list_pretrained()
    if name not in known:
        raise unknown_name_error("pretrained model", name, known)
    return load_card_and_network(checkpoints_dir() / f"{name}.json", name)
