"""Tests of compare.py: its Hydra config, and a whole run on models exported through models.hub."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from models import hub
from unrolled.layers import ALISTA
from unrolled.metrics import nmse_db
from unrolled.operators import lipschitz_constant
from unrolled.problems import SparseCoding
from unrolled.report import load_report
from unrolled.solvers import fista

pytestmark = pytest.mark.usefixtures("zoo_checkpoints")

REPO = Path(__file__).resolve().parents[1]
MAX_ITER = 100
ISTA_REG = 0.01
REG_GRID = [1e-3, 1e-2, 1e-1]
VAL_SIZE = 16


def load_compare_module():
    spec = importlib.util.spec_from_file_location("compare", REPO / "compare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def compose_config(overrides: list[str] | None = None):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config_name="compare", overrides=overrides or [])


def small_problem() -> SparseCoding:
    return SparseCoding(m=50, n=100, n_val=64, n_test=64)


def test_config_defaults():
    compare = load_compare_module()
    cfg = compose_config()

    assert cfg.runs == []
    assert cfg.pretrained == []
    assert cfg.max_iter == 10_000
    assert cfg.val_size == 256
    assert cfg.device == "auto"
    assert cfg.ista_reg is None
    assert cfg.fista_reg is None
    assert compare.reg_grid(cfg.reg_grid) == pytest.approx(list(np.logspace(-4, -1, 10)), rel=1e-12)


def test_config_reg_values_replace_logspace():
    compare = load_compare_module()
    cfg = compose_config(["reg_grid.values=[0.5,0.25]", "max_iter=7", "ista_reg=0.01", "output_dir=unused"])
    config = compare.report_config(cfg)

    assert config.reg_grid == (0.5, 0.25)
    assert config.max_iter == 7
    assert config.ista_reg == 0.01
    assert config.device in ("cpu", "cuda")


def test_resolve_device():
    compare = load_compare_module()

    assert compare.resolve_device("cpu") == "cpu"
    assert compare.resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            compare.resolve_device("cuda")


def test_compare_without_models_fails(tmp_path):
    compare = load_compare_module()
    cfg = compose_config([f"output_dir={tmp_path}"])

    with pytest.raises(ValueError, match="no models to compare"):
        compare.run_compare(cfg)
    assert os.listdir(tmp_path) == []


def export_models(tmp_path: Path) -> tuple[Path, Path, SparseCoding]:
    """Export an ISTA-equivalent ALISTA as a run folder and an untrained float32 ALISTA as a pretrained model."""
    problem = small_problem()
    step_size = 1.0 / lipschitz_constant(problem.A)
    ista_equivalent = ALISTA(problem.A, 6, reg=ISTA_REG, step_size=step_size, support_selection=False, W=problem.A)
    kwargs = {"reg": ISTA_REG, "step_size": step_size, "support_selection": False}
    run_dir, checkpoints = tmp_path / "run_ista", tmp_path / "checkpoints"
    hub.export_model(run_dir, "alista", ista_equivalent, kwargs, problem, {})
    hub.export_model(checkpoints, "alista", ALISTA(problem.A.float(), 4), {}, problem, {}, stem="toy.alista")
    return run_dir, checkpoints, problem


def test_compare_end_to_end(tmp_path):
    run_dir, checkpoints, problem = export_models(tmp_path)
    output_dir = tmp_path / "hydra"
    overrides = [
        f"runs=[{run_dir}]",
        "pretrained=[toy.alista]",
        f"max_iter={MAX_ITER}",
        f"reg_grid.values=[{','.join(map(str, REG_GRID))}]",
        f"val_size={VAL_SIZE}",
        f"ista_reg={ISTA_REG}",
        "timing_repeats=2",
        "device=cpu",
        "progress=false",
        "num_threads=1",
        f"hydra.run.dir={output_dir}",
    ]
    env = {**os.environ, hub.CHECKPOINTS_ENV: str(checkpoints)}
    completed = subprocess.run([sys.executable, "compare.py", *overrides], cwd=REPO, env=env,
                               capture_output=True, text=True, timeout=300)

    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip().splitlines()[-1] == f"Report: {output_dir / 'report.md'}"
    # The default output_dir is Hydra's run folder, which also contains Hydra's own files.
    assert sorted(os.listdir(output_dir)) == [".hydra", "compare.log", "report.json", "report.md", "report.png"]

    report = load_report(output_dir / "report.json")
    assert [model.name for model in report.models] == ["run_ista", "toy.alista"]
    assert [model.dtype for model in report.models] == ["float64", "float32"]
    assert len(report.problems) == 1
    assert report.problems[0].spec == problem.spec()
    assert report.machine["torch_threads"] == 1
    assert report.settings["max_iter"] == MAX_ITER

    ista_layers = report.models[0].layers
    assert [layer.solver("ista").iterations_to_reach for layer in ista_layers] == [1, 2, 3, 4, 5, 6]

    y_val, x_val = problem.fixed_set("val")
    scores = [float(nmse_db(fista(problem.A, y_val[:VAL_SIZE], reg, max_iter=MAX_ITER).x, x_val[:VAL_SIZE])) for reg in REG_GRID]
    assert report.problems[0].reg("fista").reg == REG_GRID[int(np.argmin(scores))]

    markdown = (output_dir / "report.md").read_text()
    assert "## Model run_ista (ALISTA, float64, 6 layers, problem P1)" in markdown
    assert "## Model toy.alista (ALISTA, float32, 4 layers, problem P1)" in markdown
    assert json.loads((output_dir / "report.json").read_text())["settings"]["ista_reg"] == ISTA_REG
