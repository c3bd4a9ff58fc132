"""Imaging checkpoints: export, list, load and verify ISTA-Net+, ADMM-Net and unrolled PGD models.

They live in ``checkpoints/imaging/`` (``<network>.<tag>.safetensors`` beside ``<network>.<tag>.json``),
apart from the sparse-coding zoo, because their cards describe an imaging task instead of a
sparse-coding problem and report PSNR and SSIM per stage instead of NMSE per layer. The same
rules hold: the sha256 of the weights is checked before any tensor is read, safetensors only, and
only networks of :data:`models.imaging.IMAGING_NETWORKS` and tasks of
:data:`unrolled.problems.imaging_tasks.IMAGING_TASKS` are built.

Weights are stored in float16, which halves their share of the zoo's size budget. The card's test
metrics are measured on the network after that rounding, so :func:`verify_imaging_model` reproduces
them from the stored file.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import nn

from models.hub.loading import CARD_FILE, WEIGHTS_FILE, check_sha256, checkpoints_dir, sha256_file
from models.imaging import IMAGING_NETWORKS, build_imaging_network, stage_metrics
from models.registry import unknown_name_error
from unrolled.files import write_atomic
from unrolled.problems.imaging_tasks import IMAGING_TASKS, ImagingTask, build_imaging_task

log = logging.getLogger(__name__)

IMAGING_CARD_FORMAT = "unrolled-zoo/imaging-card/1"
REQUIRED_IMAGING_FIELDS = ("network", "n_layers", "network_kwargs", "task", "weights_file", "sha256", "test_metrics")
IMAGING_SUBDIR = "imaging"
# float16 keeps about 3 significant digits, which moves the test PSNR of the shipped models by
# hundredths of a dB; the cards are measured after the rounding.
WEIGHTS_DTYPE = torch.float16
# verify accepts this deviation from the card's PSNR of every stage (dB) and SSIM (absolute).
DEFAULT_PSNR_TOLERANCE_DB = 0.1
DEFAULT_SSIM_TOLERANCE = 1e-3
LOAD_ERRORS = (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError)


@dataclass
class LoadedImagingModel:
    """An imaging network with its card and the task whose test set its card reports."""

    name: str
    network: nn.Module
    task: ImagingTask
    card: dict[str, Any]


def imaging_checkpoints_dir() -> Path:
    """Folder of the shipped imaging checkpoints: ``imaging/`` inside :func:`models.hub.checkpoints_dir`."""
    return checkpoints_dir() / IMAGING_SUBDIR


def list_imaging_pretrained() -> list[str]:
    """Names of the shipped imaging models (``network.tag``), sorted."""
    return sorted(path.stem for path in imaging_checkpoints_dir().glob("*.json"))


def round_to_storage(network: nn.Module) -> nn.Module:
    """Round every floating parameter and buffer of ``network`` to :data:`WEIGHTS_DTYPE` precision, in place."""
    with torch.no_grad():
        for tensor in [*network.parameters(), *network.buffers()]:
            if tensor.is_floating_point():
                tensor.copy_(tensor.to(WEIGHTS_DTYPE))
    return network


def storage_tensors(network: nn.Module) -> dict[str, torch.Tensor]:
    """Return the state dict of ``network`` for the weights file: floating tensors in :data:`WEIGHTS_DTYPE`, on the CPU."""
    return {
        key: (value.to(WEIGHTS_DTYPE) if value.is_floating_point() else value).detach().cpu().contiguous()
        for key, value in network.state_dict().items()
    }


def export_imaging_model(
    folder: Path, network_name: str, network: nn.Module, network_kwargs: dict[str, Any], task: ImagingTask, extra: dict[str, Any]
) -> Path:
    """Write ``model.safetensors`` (float16) and ``model_card.json`` atomically into ``folder``; return the card's path.

    ``network`` must already be rounded (:func:`round_to_storage`) and ``extra`` must hold its test
    metrics, so that the card describes the stored weights.
    """
    weights_path = Path(folder) / WEIGHTS_FILE
    write_atomic(weights_path, save(storage_tensors(network)))
    card = {
        "format": IMAGING_CARD_FORMAT,
        "network": network_name,
        "n_layers": network.n_layers,
        "network_kwargs": network_kwargs,
        "task": task.spec(),
        "weights_file": weights_path.name,
        "weights_dtype": str(WEIGHTS_DTYPE).removeprefix("torch."),
        "sha256": sha256_file(weights_path),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **extra,
    }
    card_path = Path(folder) / CARD_FILE
    write_atomic(card_path, (json.dumps(card, indent=2) + "\n").encode())
    return card_path


def publish_imaging(run_dir: Path, name: str) -> Path:
    """Publish a run's imaging model into the imaging checkpoints folder as ``<name>.safetensors`` and ``<name>.json``.

    The weights are stored in :data:`WEIGHTS_DTYPE` whatever the run's file holds, and the card's
    test metrics are re-measured on the rounded network, so that ``verify`` reproduces them.
    """
    loaded = load_imaging_run(run_dir)
    network = round_to_storage(loaded.network)
    metrics = stage_metrics(network, loaded.task.fixed_set("test").to(torch.float32))
    target = imaging_checkpoints_dir()
    target.mkdir(parents=True, exist_ok=True)
    weights_path = target / f"{name}.safetensors"
    write_atomic(weights_path, save(storage_tensors(network)))
    card = {
        **loaded.card,
        "weights_file": weights_path.name,
        "weights_dtype": str(WEIGHTS_DTYPE).removeprefix("torch."),
        "sha256": sha256_file(weights_path),
        "test_metrics": metrics,
    }
    write_atomic(target / f"{name}.json", (json.dumps(card, indent=2) + "\n").encode())
    log.info("Published %s to %s: test PSNR %.2f dB after %d stages", name, target, metrics["psnr_db"][-1], network.n_layers)
    return target / f"{name}.json"


def read_imaging_card(card_path: Path) -> dict[str, Any]:
    """Read and check an imaging model card without opening its weights; only registered networks and tasks pass."""
    card = json.loads(Path(card_path).read_text())
    if not isinstance(card, dict) or card.get("format") != IMAGING_CARD_FORMAT:
        raise ValueError(f"{card_path} is not an imaging model card: expected format {IMAGING_CARD_FORMAT!r}.")
    missing = [field for field in REQUIRED_IMAGING_FIELDS if field not in card]
    if missing:
        raise ValueError(f"imaging model card {card_path} has no {', '.join(missing)}; re-export the model.")
    if card["network"] not in IMAGING_NETWORKS:
        error = unknown_name_error("imaging network", str(card["network"]), list(IMAGING_NETWORKS))
        raise ValueError(f"{error} The model card {card_path} names it; nothing was instantiated.")
    if not isinstance(card["task"], dict) or card["task"].get("name") not in IMAGING_TASKS:
        raise ValueError(f"imaging model card {card_path} names an unknown task {card['task']!r}; nothing was instantiated.")
    if Path(card["weights_file"]).name != card["weights_file"] or card["weights_file"] in ("", ".", ".."):
        raise ValueError(f"weights_file in {card_path} must be a plain file name, got {card['weights_file']!r}.")
    return card


def load_imaging_card(card_path: Path, name: str) -> LoadedImagingModel:
    """Load the imaging network of a card after checking the card and the sha256 of its weights (float32, eval mode)."""
    card = read_imaging_card(card_path)
    weights_path = Path(card_path).parent / card["weights_file"]
    check_sha256(weights_path, card, card_path)
    network = build_imaging_network(card["network"], card["n_layers"], **card["network_kwargs"])
    state = {key: value.float() if value.is_floating_point() else value for key, value in load_file(str(weights_path)).items()}
    network.load_state_dict(state, strict=True)
    network.eval()
    return LoadedImagingModel(name=name, network=network, task=build_imaging_task(card["task"]), card=card)


def load_imaging_run(folder: str | Path) -> LoadedImagingModel:
    """Load the imaging model that ``train.py`` exported into a run folder."""
    folder = Path(folder)
    card_path = folder / CARD_FILE
    if not card_path.is_file():
        raise FileNotFoundError(f"no {CARD_FILE} in {folder}; expected the run folder of a finished train.py run.")
    return load_imaging_card(card_path, folder.name)


def load_imaging_pretrained(name: str) -> LoadedImagingModel:
    """Load the shipped imaging model ``name`` (see :func:`list_imaging_pretrained`) offline, with sha256 verification."""
    known = list_imaging_pretrained()
    if name not in known:
        raise unknown_name_error("pretrained imaging model", name, known)
    return load_imaging_card(imaging_checkpoints_dir() / f"{name}.json", name)


@dataclass
class ImagingVerification:
    """Outcome of re-measuring one imaging checkpoint: the largest deviations from its card, or the error."""

    name: str
    psnr_tolerance_db: float
    ssim_tolerance: float
    card_psnr_db: float | None = None
    measured_psnr_db: float | None = None
    max_psnr_deviation_db: float | None = None
    max_ssim_deviation: float | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return (
            self.error is None
            and self.max_psnr_deviation_db is not None
            and self.max_psnr_deviation_db <= self.psnr_tolerance_db
            and self.max_ssim_deviation is not None
            and self.max_ssim_deviation <= self.ssim_tolerance
        )


def verify_imaging_model(
    name: str, psnr_tolerance_db: float = DEFAULT_PSNR_TOLERANCE_DB, ssim_tolerance: float = DEFAULT_SSIM_TOLERANCE
) -> ImagingVerification:
    """Regenerate the test set of the shipped imaging model ``name`` and re-measure PSNR and SSIM after every stage.

    Loading errors and incomplete cards make the check fail with ``error`` set; they are not raised.
    """
    result = ImagingVerification(name, psnr_tolerance_db, ssim_tolerance)
    try:
        loaded = load_imaging_pretrained(name)
    except LOAD_ERRORS as error:
        result.error = f"loading failed: {error}"
        return result
    card_metrics = loaded.card["test_metrics"]
    if len(card_metrics.get("psnr_db", [])) != loaded.network.n_layers or len(card_metrics.get("ssim", [])) != loaded.network.n_layers:
        result.error = f"card test_metrics must list psnr_db and ssim for each of the {loaded.network.n_layers} stages"
        return result

    measured = stage_metrics(loaded.network, loaded.task.fixed_set("test").to(torch.float32))
    psnr_deviations = [abs(card - new) for card, new in zip(card_metrics["psnr_db"], measured["psnr_db"])]
    ssim_deviations = [abs(card - new) for card, new in zip(card_metrics["ssim"], measured["ssim"])]
    # NaN must fail the check, so it replaces the maximum instead of being skipped by it.
    result.max_psnr_deviation_db = math.nan if any(map(math.isnan, psnr_deviations)) else max(psnr_deviations)
    result.max_ssim_deviation = math.nan if any(map(math.isnan, ssim_deviations)) else max(ssim_deviations)
    result.card_psnr_db = card_metrics["psnr_db"][-1]
    result.measured_psnr_db = measured["psnr_db"][-1]
    return result
