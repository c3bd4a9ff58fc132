"""Export trained networks as a ``.safetensors`` weights file beside a JSON model card, and measure the card's test metrics.

The weights file contains the learned tensors only: the operator A is regenerated from the card's
problem seeds when the model loads (see :mod:`models.hub.loading`). :func:`choose_storage` stores
the large learned matrices in float16 when that moves the test NMSE of the last layer by at most
:data:`STORAGE_TOLERANCE_DB`, which halves the size of a LISTA-CP-like checkpoint. The card is then
measured on the rounded weights, so ``verify`` re-measures exactly what is shipped.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save

from models.hub.loading import (
    CARD_FILE,
    CARD_FORMAT,
    WEIGHTS_FILE,
    checkpoints_dir,
    load_pretrained,
    operator_probes,
    pretrained_card_path,
    sha256_file,
)
from unrolled.files import write_atomic
from unrolled.layers import UnrolledISTA
from unrolled.machine import describe_machine
from unrolled.problems import Problem
from unrolled.report.evaluate import evaluate_layers


# Largest shift of the last layer's test NMSE (aggregate, dB) that float16 storage may cause.
STORAGE_TOLERANCE_DB = 0.05
# Tensors with fewer entries (thresholds, step sizes, gates) stay in float32 because they take little room.
HALF_MIN_NUMEL = 4096


def is_large(tensor: torch.Tensor) -> bool:
    """Return whether float16 storage rounds ``tensor``: a floating-point tensor with at least HALF_MIN_NUMEL entries."""
    return tensor.is_floating_point() and tensor.numel() >= HALF_MIN_NUMEL


def round_large_tensors(network: UnrolledISTA, dtype: torch.dtype) -> UnrolledISTA:
    """Return a copy of ``network`` whose large learned tensors are rounded through ``dtype`` and back."""
    rounded = copy.deepcopy(network)
    with torch.no_grad():
        for key, value in rounded.state_dict().items():
            if key != "A" and is_large(value):
                value.copy_(value.to(dtype))
    return rounded


@dataclass
class StorageChoice:
    """The network as it will be stored, its storage dtype, its test metrics, and the shift rounding caused."""

    network: UnrolledISTA
    weights_dtype: torch.dtype
    test_metrics: dict[str, Any]
    rounding_shift_db: float


def choose_storage(network: UnrolledISTA, problem: Problem, tolerance_db: float = STORAGE_TOLERANCE_DB) -> StorageChoice:
    """Choose float16 for the large learned tensors if that moves the last layer's test NMSE by at most ``tolerance_db``.

    Both the network as trained and its float16-rounded copy are measured on the test set. The
    rounded copy is kept when its aggregate NMSE at the last layer is within ``tolerance_db`` of the
    other's. The returned test metrics are those of the network that is kept.
    """
    exact = measure_test_metrics(network, problem)
    rounded = round_large_tensors(network, torch.float16)
    rounded_metrics = measure_test_metrics(rounded, problem)
    shift = rounded_metrics["per_layer"]["nmse_db"][-1] - exact["per_layer"]["nmse_db"][-1]
    if abs(shift) <= tolerance_db:
        return StorageChoice(rounded, torch.float16, rounded_metrics, shift)
    return StorageChoice(network, torch.float32, exact, shift)


def export_model(
    folder: Path,
    network_name: str,
    network: UnrolledISTA,
    network_kwargs: dict[str, Any],
    problem: Problem,
    extra: dict[str, Any],
    stem: str | None = None,
    weights_dtype: torch.dtype = torch.float32,
) -> Path:
    """Write ``<stem>.safetensors`` and ``<stem>.json`` (default: model.safetensors and model_card.json) atomically.

    The card records the network name and constructor arguments, the problem spec with its seeds, the
    operator's dtype and probes, the sha256 of the weights and everything in ``extra`` (training
    config, test metrics per layer, training time, hardware). The weights file leaves out the
    operator A, so A must be the problem's up to rounding (``ValueError`` otherwise). The large
    learned tensors are stored in ``weights_dtype``. Returns the card's path.
    """
    A = network.A.detach().cpu()
    # Not exact equality: LAPACK on another CPU may round an ill-conditioned A differently in the last bit.
    if A.shape != problem.A.shape or not torch.allclose(A, problem.A.to(A.dtype), rtol=0.0, atol=1e-6 * A.abs().max().item()):
        raise ValueError(
            f"the network's operator A ({tuple(A.shape)}, {A.dtype}) is not the operator of problem {problem.spec()}, "
            "so the card could not regenerate it. Export the network with the problem it was built for."
        )
    folder = Path(folder)
    weights_path = folder / (f"{stem}.safetensors" if stem else WEIGHTS_FILE)
    card_path = folder / (f"{stem}.json" if stem else CARD_FILE)
    tensors = {
        key: (value.to(weights_dtype) if is_large(value) else value).detach().cpu().contiguous()
        for key, value in network.state_dict().items()
        if key != "A"
    }
    write_atomic(weights_path, save(tensors))
    card = {
        "format": CARD_FORMAT,
        "network": network_name,
        "n_layers": network.n_layers,
        "network_kwargs": network_kwargs,
        "problem": problem.spec(),
        "operator": {"dtype": str(A.dtype).removeprefix("torch."), "probes": operator_probes(A)},
        "weights_file": weights_path.name,
        "weights_dtype": str(weights_dtype).removeprefix("torch."),
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


def repack_checkpoint(name: str) -> dict[str, Any]:
    """Rewrite the shipped model ``name`` in the current card format, with its storage chosen by :func:`choose_storage`.

    The operator leaves the weights file and the large tensors may move to float16. The test metrics
    are re-measured on the weights as stored. Every other field of the card (training record,
    command, machine) is carried over. Returns the new card.
    """
    loaded = load_pretrained(name)
    # Loading the new card regenerates A on this machine, so the card is measured with that A.
    with torch.no_grad():
        loaded.network.A.copy_(loaded.problem.A)
    storage = choose_storage(loaded.network, loaded.problem)
    # export_model writes these four fields anew.
    rewritten = ("format", "operator", "weights_dtype", "sha256")
    carried_fields = {key: value for key, value in loaded.card.items() if key not in rewritten}
    extra = {
        **carried_fields,
        "test_metrics": {**storage.test_metrics, "measured": datetime.now(timezone.utc).isoformat(timespec="seconds")},
        "storage": {"rounding_shift_db": storage.rounding_shift_db},
    }
    card_path = pretrained_card_path(name)
    export_model(
        card_path.parent,
        loaded.card["network"],
        storage.network,
        loaded.card["network_kwargs"],
        loaded.problem,
        extra,
        stem=name,
        weights_dtype=storage.weights_dtype,
    )
    return json.loads(card_path.read_text())


def refresh_test_metrics(name: str) -> dict[str, Any]:
    """Re-measure the test metrics of the shipped model ``name`` and rewrite its card atomically (weights unchanged)."""
    loaded = load_pretrained(name)
    card = {**loaded.card, "test_metrics": measure_test_metrics(loaded.network, loaded.problem)}
    card["test_metrics"]["measured"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    write_atomic(checkpoints_dir() / f"{name}.json", (json.dumps(card, indent=2) + "\n").encode())
    return card
