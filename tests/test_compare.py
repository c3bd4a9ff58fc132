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
from unrolled.report import load_report, plot_report
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
    completed = subprocess.run(
        [sys.executable, "compare.py", *overrides], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )

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


# Shipped models from the repository's checkpoints/ (read only).
SHIPPED = REPO / "checkpoints"
NOISELESS_MODELS = ["alista.sc250x500_noiseless", "lista_cp.sc250x500_noiseless"]


def test_compare_models_of_different_problems_fails(tmp_path, monkeypatch):
    monkeypatch.setenv(hub.CHECKPOINTS_ENV, str(SHIPPED))
    compare = load_compare_module()
    cfg = compose_config(["pretrained=[alista.sc250x500_noiseless,alista.sc250x500_snr40]", f"output_dir={tmp_path}"])

    with pytest.raises(ValueError, match="the models are on 2 different problems") as error:
        compare.run_compare(cfg)

    message = str(error.value)
    assert "alista.sc250x500_noiseless on 'sparse_coding' (snr_db=None)" in message
    assert "alista.sc250x500_snr40 on 'sparse_coding' (snr_db=40)" in message
    assert "compare the models of each problem in a separate report" in message
    assert os.listdir(tmp_path) == []


def test_compare_run_and_model_of_different_problems_fails(tmp_path, monkeypatch):
    run_dir, _, _ = export_models(tmp_path)
    monkeypatch.setenv(hub.CHECKPOINTS_ENV, str(SHIPPED))
    compare = load_compare_module()
    output_dir = tmp_path / "report"
    cfg = compose_config([f"runs=[{run_dir}]", "pretrained=[alista.sc250x500_noiseless]", f"output_dir={output_dir}"])

    with pytest.raises(ValueError, match="the models are on 2 different problems") as error:
        compare.run_compare(cfg)

    assert "run_ista on 'sparse_coding' (m=50, n=100, n_test=64, n_val=64)" in str(error.value)
    assert "alista.sc250x500_noiseless on 'sparse_coding' (m=250, n=500, n_test=1000, n_val=1000)" in str(error.value)
    assert not output_dir.exists()


def test_compare_shipped_models_one_figure(tmp_path, monkeypatch):
    monkeypatch.setenv(hub.CHECKPOINTS_ENV, str(SHIPPED))
    # A run folder on the same problem as the shipped models: an untrained two-layer ALISTA.
    run_dir = tmp_path / "run_untrained"
    reference = SparseCoding()
    hub.export_model(run_dir, "alista", ALISTA(reference.A.float(), 2), {}, reference, {})
    compare = load_compare_module()
    output_dir = tmp_path / "report"
    overrides = [
        f"runs=[{run_dir}]",
        f"pretrained=[{','.join(NOISELESS_MODELS)}]",
        "max_iter=20",
        "reg_grid.values=[0.001,0.01]",
        "val_size=16",
        "timing_repeats=1",
        "device=cpu",
        "progress=false",
        f"output_dir={output_dir}",
    ]

    markdown_path = compare.run_compare(compose_config(overrides))

    assert markdown_path == output_dir / "report.md"
    assert sorted(os.listdir(output_dir)) == ["report.json", "report.md", "report.png"]
    report = load_report(output_dir / "report.json")
    names = ["run_untrained", *NOISELESS_MODELS]
    assert [model.name for model in report.models] == names
    assert [len(model.layers) for model in report.models] == [2, 16, 16]
    assert len(report.problems) == 1
    assert report.problems[0].spec == reference.spec()

    figure = plot_report(report)
    assert len(figure.axes) == 1
    lines = {line.get_label(): line for line in figure.axes[0].get_lines()}
    assert sorted(lines) == sorted(
        [
            *names,
            f"ISTA (reg = {report.problems[0].reg('ista').reg:.3g})",
            f"FISTA (reg = {report.problems[0].reg('fista').reg:.3g})",
        ]
    )
    for model in report.models:
        assert list(lines[model.name].get_xdata()) == [layer.n_layers for layer in model.layers]
        assert list(lines[model.name].get_ydata()) == [layer.nmse_db for layer in model.layers]
    cards = {name: json.loads((SHIPPED / f"{name}.json").read_text()) for name in NOISELESS_MODELS}
    for model in report.models[1:]:
        # The report runs the float32 networks in float32, the cards were measured in float64.
        card_nmse = cards[model.name]["test_metrics"]["per_layer"]["nmse_db"]
        assert [layer.nmse_db for layer in model.layers] == pytest.approx(card_nmse, abs=0.5)
    assert len({line.get_color() for line in lines.values()}) == len(lines)
    assert (output_dir / "report.png").read_bytes().startswith(b"\x89PNG")
