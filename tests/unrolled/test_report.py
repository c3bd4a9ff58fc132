"""Tests of the comparison report: numbers against direct computations, atomic files, JSON and PNG output."""

from __future__ import annotations

import ast
import dataclasses
import json
import os
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch

import unrolled.report as report_package
from unrolled.layers import ALISTA
from unrolled.metrics import nmse_db, nmse_db_per_sample, psnr_db
from unrolled.operators import lipschitz_constant
from unrolled.problems import SparseCoding
from unrolled.report import (
    NamedModel,
    ReportConfig,
    classical,
    compute_report,
    load_report,
    render_markdown,
    render_png,
    report_from_dict,
    report_to_dict,
    write_report,
)
from unrolled.report.classical import iterations_to_reach
from unrolled.report.evaluate import time_forward
from unrolled.solvers import fista, ista

MAX_ITER = 200
ISTA_REG = 0.01
REG_GRID = (1e-3, 1e-2, 1e-1)
VAL_SIZE = 32
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def small_problem(**kwargs) -> SparseCoding:
    return SparseCoding(m=50, n=100, n_val=64, n_test=64, **kwargs)


def ista_network(problem: SparseCoding, n_layers: int, reg: float) -> ALISTA:
    """ALISTA with W = A, step 1/L, threshold reg/L and no support selection: exactly ISTA, in float64."""
    step_size = 1.0 / lipschitz_constant(problem.A)
    return ALISTA(problem.A, n_layers, reg=reg, step_size=step_size, support_selection=False, W=problem.A)


class ToyImageProblem(SparseCoding):
    """Sparse coding whose codes synthesise 'images' through a fixed linear map, with PSNR range 1."""

    name = "toy_image"
    signal_range = 1.0

    def signal(self, x: torch.Tensor) -> torch.Tensor:
        basis = torch.linspace(-1, 1, self.n, dtype=torch.float64).outer(torch.ones(20, dtype=torch.float64))
        return 0.5 + 0.05 * x @ basis


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """Run this module on one torch thread, because the problems are tiny. On a 2-core machine busy with
    other jobs, two threads made each matrix product tens of times slower than one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def problem() -> SparseCoding:
    return small_problem()


@pytest.fixture(scope="module")
def report(problem):
    models = [
        NamedModel("ista_equivalent", ista_network(problem, 8, ISTA_REG), problem),
        NamedModel("alista_untrained", ALISTA(problem.A.float(), 6), small_problem()),
    ]
    config = ReportConfig(max_iter=MAX_ITER, reg_grid=REG_GRID, val_size=VAL_SIZE, ista_reg=ISTA_REG,
                          timing_repeats=2, progress=False)
    return compute_report(models, config)


@pytest.fixture(scope="module")
def written(report, tmp_path_factory):
    folder = tmp_path_factory.mktemp("report")
    return folder, write_report(report, folder)


def test_ista_network_needs_k_ista_iterations(report):
    model = report.models[0]

    assert [layer.n_layers for layer in model.layers] == list(range(1, 9))
    for layer in model.layers:
        assert layer.solver("ista").iterations_to_reach == layer.n_layers
        assert layer.solver("ista").nmse_db_at_k == layer.nmse_db


def test_iterations_to_reach_match_trace_search(report):
    problem_result = report.problem("P1")
    model = report.models[1]

    for layer in model.layers:
        for solver in ("ista", "fista"):
            trace = problem_result.run(solver).trace
            expected = next((k for k, value in enumerate(trace.nmse_db) if value <= layer.nmse_db), None)
            comparison = layer.solver(solver)
            assert comparison.iterations_to_reach == expected
            assert comparison.time_to_reach_s == (trace.time_s[expected] if expected is not None else None)
            assert comparison.nmse_db_at_k == trace.nmse_db[layer.n_layers]
            assert comparison.nmse_db_per_sample_at_k == trace.nmse_db_per_sample[layer.n_layers]


def test_layer_metrics_match_direct_evaluation(report, problem):
    network = ALISTA(problem.A.float(), 6)
    y, x = problem.fixed_set("test")
    with torch.no_grad():
        estimates = network(y.float())

    layers = report.models[1].layers
    assert report.models[1].dtype == "float32"
    for estimate, layer in zip(estimates, layers):
        assert layer.nmse_db == pytest.approx(float(nmse_db(estimate, x)), abs=1e-9)
        assert layer.nmse_db_per_sample == pytest.approx(float(nmse_db_per_sample(estimate, x)), abs=1e-9)
        assert layer.psnr_db is None
        assert layer.forward_s > 0


def test_fista_reg_is_grid_argmin(report, problem):
    y_val, x_val = problem.fixed_set("val")
    y_val, x_val = y_val[:VAL_SIZE], x_val[:VAL_SIZE]
    scores = [float(nmse_db(fista(problem.A, y_val, reg, max_iter=MAX_ITER).x, x_val)) for reg in REG_GRID]

    choice = report.problem("P1").reg("fista")
    assert not choice.fixed
    assert choice.grid == list(REG_GRID)
    assert choice.val_size == VAL_SIZE
    assert choice.reg == REG_GRID[int(np.argmin(scores))]
    assert choice.val_nmse_db == pytest.approx(scores, abs=1e-8)
    assert report.problem("P1").run("fista").reg == choice.reg


def test_fixed_reg_skips_grid(report):
    choice = report.problem("P1").reg("ista")

    assert choice.fixed
    assert choice.reg == ISTA_REG
    assert choice.grid == []
    assert report.problem("P1").run("ista").reg == ISTA_REG


def test_classical_run_shared_and_traced(report, problem):
    y, x = problem.fixed_set("test")
    expected = ista(problem.A, y, ISTA_REG, max_iter=MAX_ITER, trace=True, x_true=x).trace

    assert len(report.problems) == 1
    assert {model.problem_id for model in report.models} == {"P1"}
    run = report.problem("P1").run("ista")
    assert run.max_iter == MAX_ITER
    assert len(run.trace.nmse_db) == MAX_ITER + 1
    assert run.trace.nmse_db == expected.nmse_db
    assert run.trace.nmse_db_per_sample == expected.nmse_db_per_sample


def test_grid_solved_in_one_batched_call(problem, monkeypatch):
    calls = []

    def recording_fista(A, y, reg, **kwargs):
        calls.append((tuple(y.shape), tuple(torch.as_tensor(reg).shape)))
        return fista(A, y, reg, **kwargs)

    monkeypatch.setitem(classical.SOLVER_FUNCTIONS, "fista", recording_fista)
    y_val, x_val = problem.fixed_set("val")
    classical.choose_reg("fista", problem.A, y_val[:16], x_val[:16], REG_GRID, max_iter=5)

    assert calls == [((3 * 16, problem.m), (3 * 16, 1))]


def test_iterations_to_reach_edge_cases():
    trace = [0.0, -1.0, -2.0, -1.5, -3.0]

    assert iterations_to_reach(trace, -2.0) == 2
    assert iterations_to_reach(trace, -2.5) == 4
    assert iterations_to_reach(trace, 0.5) == 0
    assert iterations_to_reach(trace, -3.5) is None
    assert iterations_to_reach(trace, float("nan")) is None
    assert iterations_to_reach(trace, -2.0 - 1e-12) == 2
    assert iterations_to_reach(trace, -2.0 - 1e-12, tolerance_db=0.0) == 4


def test_problems_with_different_specs_get_own_runs():
    first, second = small_problem(), small_problem(snr_db=30.0)
    models = [
        NamedModel("a", ALISTA(first.A.float(), 2), first),
        NamedModel("b", ALISTA(second.A.float(), 3), second),
        NamedModel("a", ALISTA(first.A.float(), 2), small_problem()),
    ]
    config = ReportConfig(max_iter=10, reg_grid=(1e-2,), timing_repeats=1, progress=False)
    report = compute_report(models, config)

    assert [problem.problem_id for problem in report.problems] == ["P1", "P2"]
    assert [problem.spec["snr_db"] for problem in report.problems] == [None, 30.0]
    assert [model.problem_id for model in report.models] == ["P1", "P2", "P1"]
    assert [model.name for model in report.models] == ["a", "b", "a#2"]


def test_image_problem_gets_psnr():
    problem = ToyImageProblem(m=50, n=100, n_val=64, n_test=64)
    network = ALISTA(problem.A.float(), 3)
    config = ReportConfig(max_iter=30, reg_grid=(1e-2, 1e-1), val_size=16, timing_repeats=1, image_iters=(40,),
                          progress=False)
    report = compute_report([NamedModel("toy", network, problem)], config)

    y, x = problem.fixed_set("test")
    with torch.no_grad():
        estimates = network(y.float())
    problem_result = report.problem("P1")
    assert problem_result.signal_range == 1.0
    for estimate, layer in zip(estimates, report.models[0].layers):
        expected = float(psnr_db(problem.signal(estimate.double()), problem.signal(x), data_range=1.0))
        assert layer.psnr_db == pytest.approx(expected, abs=1e-9)

    fista_reg = problem_result.reg("fista").reg
    assert [point.n_iter for point in problem_result.iteration_metrics] == [1, 2, 3, 40]
    for point in problem_result.iteration_metrics:
        estimate = fista(problem.A, y, fista_reg, max_iter=point.n_iter).x
        assert point.psnr_db == pytest.approx(float(psnr_db(problem.signal(estimate), problem.signal(x))), abs=1e-12)
        if point.n_iter <= 30:
            assert point.nmse_db == problem_result.run("fista").trace.nmse_db[point.n_iter]

    markdown = render_markdown(report)
    assert "| PSNR (dB) |" in markdown
    assert "FISTA PSNR after k (dB)" in markdown
    assert "| FISTA, 40 iterations |" in markdown
    assert "| FISTA, 3 iterations |" in markdown
    assert "| toy, 3 layers |" in markdown


def test_markdown_lists_layers_regs_and_machine(report):
    markdown = render_markdown(report)
    ista_rows = [line for line in markdown.splitlines() if line.startswith("| ") and line.split(" | ")[0][2:].isdigit()]

    assert len(ista_rows) == 8 + 6
    assert report.machine["cpu"] in markdown
    assert f"| torch | {torch.__version__} |" in markdown
    assert f"| ISTA | {ISTA_REG:.4g} | fixed |" in markdown
    assert f"| FISTA | {report.problem('P1').reg('fista').reg:.4g} | grid, {VAL_SIZE} validation samples |" in markdown
    assert "PSNR" not in markdown
    assert "time_s" in markdown


def test_markdown_marks_unreached_iterations(report):
    changed = report_from_dict(report_to_dict(report))
    comparison = changed.models[1].layers[0].solver("fista")
    comparison.iterations_to_reach = None
    comparison.time_to_reach_s = None

    assert f"| not reached in {MAX_ITER} | – | – |" in render_markdown(changed)


def test_json_round_trip(report, written):
    folder, paths = written

    assert load_report(paths["json"]) == report
    assert report_from_dict(json.loads(json.dumps(report_to_dict(report)))) == report


def test_plot_is_valid_png(report, written):
    folder, paths = written
    image = matplotlib.image.imread(paths["png"])

    assert paths["png"].read_bytes().startswith(PNG_SIGNATURE)
    assert image.ndim == 3
    assert image.shape[0] > 100
    assert image.shape[1] > 100
    assert render_png(report).startswith(PNG_SIGNATURE)


def test_write_report_leaves_only_report_files(written):
    folder, paths = written

    assert sorted(os.listdir(folder)) == ["report.json", "report.md", "report.png"]
    assert paths["markdown"].read_text().startswith("# Unrolled networks against ISTA and FISTA")


def test_time_forward_calls_requested_depth(problem):
    class RecordingALISTA(ALISTA):
        def forward(self, y, n_layers=None):
            self.calls.append(n_layers)
            return super().forward(y, n_layers)

    network = RecordingALISTA(problem.A.float(), 5)
    network.calls = []
    seconds = time_forward(network, problem.fixed_set("test")[0].float(), 3, repeats=4)

    assert network.calls == [3] * 5
    assert 0 < seconds < 10


def test_report_config_rejects_invalid_values():
    with pytest.raises(ValueError, match="max_iter"):
        ReportConfig(max_iter=0)
    with pytest.raises(ValueError, match="reg_grid"):
        ReportConfig(reg_grid=(1e-3, -1.0))
    with pytest.raises(ValueError, match="no models"):
        compute_report([], ReportConfig())


def test_settings_recorded(report):
    settings = report.settings

    assert settings["max_iter"] == MAX_ITER
    assert settings["reg_grid"] == list(REG_GRID)
    assert settings["ista_reg"] == ISTA_REG
    assert settings["fista_reg"] is None
    assert set(settings) == {field.name for field in dataclasses.fields(ReportConfig)}


def test_report_imports_no_framework():
    package = Path(report_package.__file__).parent
    imported = set()
    for source in package.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                imported.update(alias.name.split(".")[0] for alias in node.names)
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module.split(".")[0])

    assert imported & {"models", "pytorch_lightning", "lightning", "hydra", "omegaconf"} == set()
    assert "torch" in imported


@pytest.mark.slow
def test_reference_problem_ista_network_at_scale(tmp_path):
    """Reference size (250 × 500, 1,000 test samples), the default grid, 1,000 iterations."""
    problem = SparseCoding()
    config = ReportConfig(max_iter=1000, ista_reg=3e-3, timing_repeats=3, progress=False)
    models = [NamedModel("ista16", ista_network(problem, 16, 3e-3), problem),
              NamedModel("alista16", ALISTA(problem.A.float(), 16), problem)]
    report = compute_report(models, config)
    paths = write_report(report, tmp_path)

    assert [layer.solver("ista").iterations_to_reach for layer in report.models[0].layers] == list(range(1, 17))
    assert report.problem("P1").reg("fista").grid == list(np.logspace(-4, -1, 10))
    assert report.problem("P1").run("fista").trace.nmse_db[-1] < report.problem("P1").run("ista").trace.nmse_db[-1]
    assert load_report(paths["json"]) == report


@pytest.mark.slow
def test_image_patches_problem_gets_psnr():
    """The real patch problem (about 7 s to load its images); the toy image problem above covers the same path fast."""
    from unrolled.problems.image_patches import ImagePatchCS

    if getattr(ImagePatchCS, "signal_range", None) is None:
        pytest.skip("ImagePatchCS does not define signal_range, so the report gives it no PSNR columns.")
    problem = ImagePatchCS(m=32, patch_size=8, n_val=64, n_test=64)
    network = ALISTA(problem.A.float(), 4)
    config = ReportConfig(max_iter=100, reg_grid=(1e-3, 1e-2, 1e-1), val_size=32, timing_repeats=1, image_iters=(200,),
                          progress=False)
    report = compute_report([NamedModel("alista", network, problem)], config)

    y, x = problem.fixed_set("test")
    with torch.no_grad():
        last = network(y.float())[-1]
    expected = float(psnr_db(problem.signal(last.double()), problem.signal(x), data_range=problem.signal_range))
    assert report.models[0].layers[-1].psnr_db == pytest.approx(expected, abs=1e-9)
    assert [point.n_iter for point in report.problem("P1").iteration_metrics] == [1, 2, 3, 4, 200]
    assert "| FISTA, 200 iterations |" in render_markdown(report)
