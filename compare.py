"""Compare trained unrolled networks with ISTA and FISTA: ``python compare.py runs=[RUN_DIR,...] pretrained=[NAME,...]``.

Hydra composes ``conf/compare.yaml``; the work is done by :func:`unrolled.report.make_report`, or
for imaging models (ISTA-Net+, ADMM-Net, unrolled PGD) by :func:`unrolled.report.imaging.imaging_report`,
which sets their PSNR per stage beside the task's classical solvers per iteration. Any
number of run folders and shipped models can be named, but all of them must be trained on the same
problem (the same spec), so that their per-layer curves and ISTA and FISTA share one figure. The
output folder (Hydra's run folder unless ``output_dir`` is given) receives ``report.md``,
``report.json`` and ``report.png``; the path of ``report.md`` is printed at the end.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from models import hub
from models.hub.imaging import IMAGING_CARD_FORMAT, list_imaging_pretrained, load_imaging_pretrained, load_imaging_run
from unrolled.report import ReportConfig, check_one_problem, make_report
from unrolled.report.imaging import imaging_report, write_imaging_report

log = logging.getLogger(__name__)


def resolve_device(name: str) -> str:
    """Map ``auto`` to ``cuda`` when a GPU is available, else to ``cpu``. Raise ValueError for a CUDA device without CUDA."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} was requested but CUDA is not available; use device=cpu or device=auto.")
    return str(device)


def reg_grid(grid: DictConfig) -> list[float]:
    """Return the candidate ``reg`` values: ``grid.values`` when set, else ``num`` log-spaced values from ``start`` to ``stop``."""
    if grid.get("values") is not None:
        return [float(value) for value in grid["values"]]
    if not (grid.start > 0 and grid.stop > 0 and grid.num >= 1):
        raise ValueError(f"reg_grid needs start > 0, stop > 0 and num >= 1, got {OmegaConf.to_container(grid)}.")
    return [float(value) for value in np.logspace(np.log10(grid.start), np.log10(grid.stop), int(grid.num))]


def load_models(runs: list[str], pretrained: list[str]) -> list[hub.LoadedModel]:
    """Load the run folders, then the pretrained models, in the order given; ``ValueError`` unless they share one problem."""
    if not runs and not pretrained:
        raise ValueError(
            "no models to compare: pass runs=[RUN_DIR,...] (folders written by train.py) and/or "
            f"pretrained=[NAME,...] (available: {', '.join(hub.list_pretrained()) or 'none'})."
        )
    models = [hub.load_run(path) for path in runs] + [hub.load_pretrained(name) for name in pretrained]
    for model in models:
        log.info("loaded %s: %s with %d layers", model.name, type(model.network).__name__, model.network.n_layers)
    check_one_problem(models)
    return models


def report_config(cfg: DictConfig) -> ReportConfig:
    """Translate the Hydra config into :class:`unrolled.report.ReportConfig`."""
    return ReportConfig(
        max_iter=int(cfg.max_iter),
        reg_grid=tuple(reg_grid(cfg.reg_grid)),
        val_size=int(cfg.val_size),
        ista_reg=cfg.ista_reg,
        fista_reg=cfg.fista_reg,
        timing_repeats=int(cfg.timing_repeats),
        image_iters=tuple(cfg.image_iters),
        device=resolve_device(cfg.device),
        progress=bool(cfg.progress),
    )


def is_imaging_run(folder: str) -> bool:
    """Return whether the run folder contains an imaging model card (ISTA-Net+, ADMM-Net, unrolled PGD)."""
    card = Path(folder) / hub.CARD_FILE
    return card.is_file() and json.loads(card.read_text()).get("format") == IMAGING_CARD_FORMAT


def run_imaging_compare(cfg: DictConfig) -> Path:
    """Compare imaging models (all trained on one task) with the task's classical methods; return the path of ``report.md``."""
    models = [load_imaging_run(path) for path in cfg.runs] + [load_imaging_pretrained(name) for name in cfg.pretrained]
    tasks = {json.dumps(model.task.spec(), sort_keys=True) for model in models}
    if len(tasks) > 1:
        described = "; ".join(f"{model.name}: {model.task.spec()}" for model in models)
        raise ValueError(f"the imaging models were trained on different tasks, so they cannot share one report: {described}.")
    networks = {model.name: model.network for model in models}
    report = imaging_report(
        networks, models[0].task, max_iter=int(cfg.max_iter), timing_repeats=int(cfg.timing_repeats), val_size=int(cfg.imaging_val_size), progress=log.info
    )
    return write_imaging_report(report, Path(cfg.output_dir))["markdown"]


def run_compare(cfg: DictConfig) -> Path:
    """Load the models named in ``cfg``, write the report into ``cfg.output_dir`` and return the path of ``report.md``."""
    if cfg.get("num_threads"):
        torch.set_num_threads(int(cfg.num_threads))
    imaging = [path for path in cfg.runs if is_imaging_run(path)] + [name for name in cfg.pretrained if name in list_imaging_pretrained()]
    if imaging:
        if len(imaging) != len(cfg.runs) + len(cfg.pretrained):
            raise ValueError(f"imaging models {imaging} cannot share a report with sparse-coding models; compare them separately.")
        return run_imaging_compare(cfg)
    config = report_config(cfg)
    models = load_models(list(cfg.runs), list(cfg.pretrained))
    _, paths = make_report(models, Path(cfg.output_dir), config)
    return paths["markdown"]


@hydra.main(version_base="1.3", config_path="conf", config_name="compare")
def main(cfg: DictConfig) -> None:
    markdown_path = run_compare(cfg)
    print(f"Report: {markdown_path}")


if __name__ == "__main__":
    main()
