"""Export trained networks as a ``.safetensors`` weights file beside a JSON model card, and measure the card's test metrics.

The weights file contains the learned tensors only: the operator A is regenerated from the card's
problem seeds when the model loads (see :mod:`models.hub.loading`). :func:`choose_storage` stores
the large learned matrices with the smallest codec of :mod:`models.hub.storage` (int4, int8,
float16) that moves the test NMSE of the last layer by at most :data:`STORAGE_TOLERANCE_DB`; int8
takes about a quarter of float32. The card is then measured on the weights as stored, so ``verify``
re-measures exactly what is shipped.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
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
from models.hub.storage import CODECS, encode_state, round_through
from unrolled.files import write_atomic
from unrolled.layers import UnrolledISTA
from unrolled.machine import describe_machine
from unrolled.problems import Problem
from unrolled.report.evaluate import evaluate_layers


# Largest shift of the last layer's test NMSE (aggregate, dB) that lossy storage may cause.
STORAGE_TOLERANCE_DB = 0.05
# Tensors with fewer entries (thresholds, step sizes, gates) stay in float32 because they take little room.
LOSSY_MIN_NUMEL = 4096


def is_large(key: str, tensor: torch.Tensor) -> bool:
    """Return whether ``tensor`` (state-dict entry ``key``) is stored with the chosen codec: a learned floating-point tensor of LOSSY_MIN_NUMEL entries or more."""
    return key != "A" and tensor.is_floating_point() and tensor.numel() >= LOSSY_MIN_NUMEL


def round_large_tensors(network: UnrolledISTA, codec: str) -> UnrolledISTA:
    """Return a copy of ``network`` whose large learned tensors are as they load after storage with ``codec``."""
    rounded = copy.deepcopy(network)
    with torch.no_grad():
        for key, value in rounded.state_dict().items():
            if is_large(key, value):
                value.copy_(round_through(value, codec, rounded.A))
    return rounded


@dataclass
class StorageChoice:
    """The network as it loads after storage, its codec, its test metrics, and the shift storage caused.

    ``network`` is for measuring: pass the network before rounding, with ``codec``, to
    :func:`export_model`, which rounds it again in the same way. ``shifts_db`` contains the shift
    measured for each codec tried, smallest codec first.
    """

    network: UnrolledISTA
    codec: str
    test_metrics: dict[str, Any]
    rounding_shift_db: float
    shifts_db: dict[str, float] = field(default_factory=dict)

    def card_record(self) -> dict[str, Any]:
        """Return the card's ``storage`` field."""
        return {"codec": self.codec, "rounding_shift_db": self.rounding_shift_db, "shifts_db": self.shifts_db}


def choose_storage(
    network: UnrolledISTA, problem: Problem, tolerance_db: float = STORAGE_TOLERANCE_DB, prior_shift_db: float = 0.0
) -> StorageChoice:
    """Choose the smallest codec for the large learned tensors that moves the last layer's test NMSE by at most ``tolerance_db``.

    The network as given and its copies rounded by int4, int8 and float16, in that order, are
    measured on the test set. The first copy whose aggregate NMSE at the last layer is within
    ``tolerance_db`` of the original's is kept, and float32 if none is. ``prior_shift_db`` is the shift the
    given network already carries from an earlier storage, when a shipped checkpoint is repacked.
    It counts against the tolerance and is included in the reported shifts. A network without
    large tensors is kept in float32 untried. The returned test metrics are those of the network
    that is kept.
    """
    exact = measure_test_metrics(network, problem)
    if not any(is_large(key, value) for key, value in network.state_dict().items()):
        return StorageChoice(network, "float32", exact, prior_shift_db)
    reference = exact["per_layer"]["nmse_db"][-1]
    shifts = {}
    for codec in CODECS[:-1]:
        rounded = round_large_tensors(network, codec)
        metrics = measure_test_metrics(rounded, problem)
        shifts[codec] = prior_shift_db + metrics["per_layer"]["nmse_db"][-1] - reference
        if abs(shifts[codec]) <= tolerance_db:
            return StorageChoice(rounded, codec, metrics, shifts[codec], shifts)
    return StorageChoice(network, "float32", exact, prior_shift_db, shifts)


def export_model(
    folder: Path,
    network_name: str,
    network: UnrolledISTA,
    network_kwargs: dict[str, Any],
    problem: Problem,
    extra: dict[str, Any],
    stem: str | None = None,
    codec: str = "float32",
) -> Path:
    """Write ``<stem>.safetensors`` and ``<stem>.json`` (default: model.safetensors and model_card.json) atomically.

    The card records the network name and constructor arguments, the problem spec with its seeds, the
    operator's dtype and probes, the sha256 of the weights and everything in ``extra`` (training
    config, test metrics per layer, training time, hardware). ``verify`` and ``list`` read
    ``extra["test_metrics"]`` (:attr:`StorageChoice.test_metrics`) and ``extra["storage"]``
    (:meth:`StorageChoice.card_record`). The weights file leaves out the
    operator A, so A must be the problem's up to rounding (``ValueError`` otherwise). The large
    learned tensors are stored with ``codec`` (see :mod:`models.hub.storage`), and the card's
    ``weights_storage`` lists how. Pass the network before any rounding: coding on the operator
    basis is not idempotent, so only the unrounded network stores exactly as
    :func:`choose_storage` rounded it. Returns the card's path.
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
    state = {key: value for key, value in network.state_dict().items() if key != "A"}
    entries, records = encode_state(state, {key: codec for key, value in state.items() if is_large(key, value)}, A)
    write_atomic(weights_path, save(entries))
    card = {
        "format": CARD_FORMAT,
        "network": network_name,
        "n_layers": network.n_layers,
        "network_kwargs": network_kwargs,
        "problem": problem.spec(),
        "operator": {"dtype": str(A.dtype).removeprefix("torch."), "probes": operator_probes(A)},
        "weights_file": weights_path.name,
        "weights_storage": records,
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

    The operator leaves the weights file and the large tensors may move to a smaller codec. The
    shift recorded in the old card counts against the tolerance, so the new card's shift is measured
    from the weights as trained. The test metrics are re-measured on the weights as stored. Every
    other field of the card (training record, command, machine) is carried over. Returns the new card.
    """
    loaded = load_pretrained(name)
    # Loading the new card regenerates A on this machine, so the card is measured with that A.
    with torch.no_grad():
        loaded.network.A.copy_(loaded.problem.A)
    prior_shift = loaded.card.get("storage", {}).get("rounding_shift_db", 0.0)
    storage = choose_storage(loaded.network, loaded.problem, prior_shift_db=prior_shift)
    # export_model writes these fields anew. Format-2 cards have weights_dtype where format 3 has weights_storage.
    rewritten = ("format", "operator", "weights_dtype", "weights_storage", "sha256")
    carried_fields = {key: value for key, value in loaded.card.items() if key not in rewritten}
    extra = {
        **carried_fields,
        "test_metrics": {**storage.test_metrics, "measured": datetime.now(timezone.utc).isoformat(timespec="seconds")},
        "storage": storage.card_record(),
    }
    card_path = pretrained_card_path(name)
    export_model(
        card_path.parent,
        loaded.card["network"],
        loaded.network,
        loaded.card["network_kwargs"],
        loaded.problem,
        extra,
        stem=name,
        codec=storage.codec,
    )
    return json.loads(card_path.read_text())


def refresh_test_metrics(name: str) -> dict[str, Any]:
    """Re-measure the test metrics of the shipped model ``name`` and rewrite its card atomically (weights unchanged)."""
    loaded = load_pretrained(name)
    card = {**loaded.card, "test_metrics": measure_test_metrics(loaded.network, loaded.problem)}
    card["test_metrics"]["measured"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    write_atomic(checkpoints_dir() / f"{name}.json", (json.dumps(card, indent=2) + "\n").encode())
    return card
