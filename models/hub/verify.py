"""Summaries of the shipped checkpoints, and verification of their cards' test metrics against a fresh measurement."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from typing import Any

from safetensors import SafetensorError

from models.hub.export import measure_test_metrics
from models.hub.loading import card_codec, checkpoints_dir, list_pretrained, load_pretrained

log = logging.getLogger(__name__)

# The two NMSE conventions of the card's ``test_metrics.per_layer`` (see unrolled.metrics).
CONVENTIONS = ("nmse_db", "nmse_db_per_sample")
DEFAULT_TOLERANCE_DB = 0.1
# Errors a broken checkpoint can raise while it loads: unreadable files, invalid cards, sha256
# mismatches, safetensors parse errors and weights that do not fit the network.
LOAD_ERRORS = (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError)


@dataclass
class CheckpointSummary:
    """One shipped checkpoint as its card describes it; ``None`` where the card lacks the field."""

    name: str
    network: str | None
    tag: str
    problem: str | None
    n_layers: int | None
    nmse_db: float | None
    nmse_db_per_sample: float | None
    weights_mb: float | None
    codec: str | None


@dataclass
class Verification:
    """Card figures against a fresh float64 measurement of one model, at the last layer and as the largest deviation.

    ``max_deviation_at`` names the convention and layer (from 1) of the largest deviation. ``error`` is
    the reason the model failed before its figures could be compared (None when they were compared).
    """

    name: str
    tolerance_db: float
    n_layers: int | None = None
    card_nmse_db: float | None = None
    measured_nmse_db: float | None = None
    card_nmse_db_per_sample: float | None = None
    measured_nmse_db_per_sample: float | None = None
    max_deviation_db: float | None = None
    max_deviation_at: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.max_deviation_db is not None and self.max_deviation_db <= self.tolerance_db


def describe_problem(spec: dict[str, Any]) -> str:
    """Return a short description of a problem spec, such as ``sparse_coding 250x500 noiseless kappa=30``."""
    parts = [str(spec.get("name", "?"))]
    if "m" in spec and "n" in spec:
        parts.append(f"{spec['m']}x{spec['n']}")
    elif "m" in spec:
        parts.append(f"m={spec['m']}")
    if "patch_size" in spec:
        parts.append(f"{spec['patch_size']}x{spec['patch_size']} patches")
    if "snr_db" in spec:
        parts.append("noiseless" if spec["snr_db"] is None else f"SNR {spec['snr_db']:g} dB")
    if spec.get("condition_number") is not None:
        parts.append(f"kappa={spec['condition_number']:g}")
    return " ".join(parts)


def summarize_checkpoint(name: str) -> CheckpointSummary:
    """Read the card of the shipped model ``name`` (never its weights) and summarise it.

    An unreadable card gives a summary with only the name and tag, and a logged warning.
    """
    tag = name.split(".", 1)[1] if "." in name else ""
    card_path = checkpoints_dir() / f"{name}.json"
    try:
        card = json.loads(card_path.read_text())
        if not isinstance(card, dict):
            raise ValueError(f"expected a JSON object, got {type(card).__name__}")
    except (OSError, ValueError) as error:
        log.warning("cannot read the model card %s: %s", card_path, error)
        return CheckpointSummary(name, None, tag, None, None, None, None, None, None)

    per_layer = card.get("test_metrics", {}).get("per_layer", {})
    weights_path = card_path.parent / str(card.get("weights_file", ""))
    weights_mb = weights_path.stat().st_size / 1e6 if card.get("weights_file") and weights_path.is_file() else None
    return CheckpointSummary(
        name=name,
        network=card.get("network"),
        tag=tag,
        problem=describe_problem(card["problem"]) if isinstance(card.get("problem"), dict) else None,
        n_layers=card.get("n_layers"),
        nmse_db=_last(per_layer.get("nmse_db")),
        nmse_db_per_sample=_last(per_layer.get("nmse_db_per_sample")),
        weights_mb=weights_mb,
        codec=card_codec(card),
    )


def _last(values: Any) -> float | None:
    if isinstance(values, list) and values and isinstance(values[-1], (int, float)):
        return float(values[-1])
    return None


def verify_model(name: str, tolerance_db: float = DEFAULT_TOLERANCE_DB) -> Verification:
    """Re-measure every layer of the shipped model ``name`` in float64 and compare with its card, in both NMSE conventions.

    The model passes when every layer of both conventions is within ``tolerance_db`` of the card.
    Loading errors and incomplete cards make it fail with ``error`` set, and are not raised.
    """
    result = Verification(name, tolerance_db)
    try:
        loaded = load_pretrained(name)
    except LOAD_ERRORS as error:
        result.error = f"loading failed: {error}"
        return result

    result.n_layers = loaded.network.n_layers
    card_metrics = loaded.card.get("test_metrics", {}).get("per_layer", {})
    defect = _card_metrics_defect(card_metrics, loaded.network.n_layers)
    if defect is not None:
        result.error = f"card test_metrics.per_layer: {defect}"
        return result

    measured = measure_test_metrics(loaded.network, loaded.problem)["per_layer"]
    deviations = {
        (key, layer): abs(card - new)
        for key in CONVENTIONS
        for layer, (card, new) in enumerate(zip(card_metrics[key], measured[key]), start=1)
    }
    # A NaN must fail the check, and max() would let it pass or not depending on its position.
    key, layer = next((where for where, value in deviations.items() if math.isnan(value)), max(deviations, key=deviations.get))
    result.max_deviation_db, result.max_deviation_at = deviations[key, layer], f"{key}, layer {layer}"
    result.card_nmse_db, result.measured_nmse_db = card_metrics["nmse_db"][-1], measured["nmse_db"][-1]
    result.card_nmse_db_per_sample = card_metrics["nmse_db_per_sample"][-1]
    result.measured_nmse_db_per_sample = measured["nmse_db_per_sample"][-1]
    return result


def _card_metrics_defect(per_layer: Any, n_layers: int) -> str | None:
    """Return what keeps the card's per-layer metrics from being compared, or None when they can be."""
    if not isinstance(per_layer, dict):
        return "missing"
    for key in CONVENTIONS:
        values = per_layer.get(key)
        if not isinstance(values, list):
            return f"{key} is missing"
        if len(values) != n_layers:
            return f"{key} lists {len(values)} layers, but the network has {n_layers}"
        if not all(isinstance(value, (int, float)) and not isinstance(value, bool) for value in values):
            return f"{key} contains entries that are not numbers"
    return None


def verify_models(names: list[str] | None = None, tolerance_db: float = DEFAULT_TOLERANCE_DB) -> list[Verification]:
    """Verify the shipped models ``names`` (all of them when None), in that order; see :func:`verify_model`."""
    names = list_pretrained() if names is None else names
    results = []
    for name in names:
        log.info("verifying %s", name)
        results.append(verify_model(name, tolerance_db))
    return results
