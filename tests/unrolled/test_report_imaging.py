"""Imaging report and robustness table: checkpoints, matching iterations, reg selection, consistency of the figures."""

from __future__ import annotations

import json

import pytest
import torch

from unrolled.layers.pgd_cnn import UnrolledPGDCNN
from unrolled.problems.imaging_tasks import InpaintingTask, MRITask
from unrolled.report.imaging import (
    classical_methods,
    imaging_report,
    iteration_checkpoints,
    iterations_to_match,
    mean_psnr,
    render_markdown,
    write_imaging_report,
)
from unrolled.report.robustness import render_robustness, robustness_table

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def test_iteration_checkpoints_are_log_spaced():
    assert iteration_checkpoints(1000) == [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000]
    assert iteration_checkpoints(30) == [1, 2, 5, 10, 20, 30]


def test_iterations_to_match_first_crossing():
    checkpoints = [1, 2, 5, 10]
    curve = [20.0, 25.0, 24.0, 30.0]
    assert iterations_to_match(checkpoints, curve, [19.0, 24.5, 29.0, 31.0]) == [1, 2, 10, None]


class _ZeroFilling(torch.nn.Module):
    """Two "stages" that both return the zero-filled image, for a network whose PSNR is known in advance."""

    n_layers = 2

    def forward(self, y, operator, noise_std=None, all_stages=False):
        estimate = operator.adjoint(y)
        return [estimate, estimate] if all_stages else estimate


def test_mri_report_is_consistent(tmp_path):
    task = MRITask(n_val=2)
    report = imaging_report({"zero": _ZeroFilling()}, task, max_iter=5, timing_repeats=1, val_size=2)
    test = task.fixed_set("test").to(torch.float32)
    zero_filled = mean_psnr(test, test.operator.adjoint(test.y))

    assert report["checkpoints"] == [1, 2, 5]
    assert report["classical"]["zero_filled"]["final_psnr_db"] == pytest.approx(zero_filled, abs=1e-9)
    assert report["networks"]["zero"]["psnr_db"] == pytest.approx([zero_filled, zero_filled], abs=1e-9)
    for name in ("tv_admm", "wavelet_admm"):
        method = report["classical"][name]
        assert method["final_psnr_db"] == pytest.approx(method["psnr_db"][-1], abs=1e-9)
        best = max(method["val_psnr_db"].values())
        assert method["val_psnr_db"][repr(method["reg"])] == best
        assert method["time_s"] > 0
    # TV-ADMM improves on zero filling at 25 % Cartesian sampling within five iterations.
    assert report["classical"]["tv_admm"]["final_psnr_db"] > zero_filled + 1.0

    paths = write_imaging_report(report, tmp_path)
    assert json.loads(paths["json"].read_text())["max_iter"] == 5
    assert "| zero_filled |" in paths["markdown"].read_text()
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "tv_admm: iterations to match" in render_markdown(report)


def test_outlier_task_adds_robust_method():
    assert "tv_admm_l1" in classical_methods(InpaintingTask(outlier_fraction=0.1))
    assert "tv_admm_l1" not in classical_methods(InpaintingTask())


def test_robustness_table_rows():
    task = InpaintingTask(test_size=32, n_val=2, patch_size=32)
    network = UnrolledPGDCNN(2, channels=4, depth=2)
    table = robustness_table({"pgd": network}, task, observed_ratios=(0.5,), sigmas_255=(15.0,), max_iter=3, val_size=2)

    assert len(table["rows"]) == 2
    first, outliers = table["rows"]
    test = task.fixed_set("test", observed_ratio=0.5, sigma_255=15.0).to(torch.float32)
    with torch.no_grad():
        expected = mean_psnr(test, network(test.y, test.operator, noise_std=test.noise_std))
    assert first["networks"]["pgd"] == pytest.approx(expected, abs=1e-9)
    assert outliers["outlier_fraction"] == 0.1
    assert "tv_admm_l1" in outliers
    assert "| 50% | 15 | 10% |" in render_robustness(table)
