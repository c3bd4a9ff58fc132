"""bench.lasso_vs_sklearn at a tiny size: the table, the ratio line, and the gaps it reports, checked independently."""

from __future__ import annotations

import argparse
import importlib.util
import sys

import pytest
import torch
from sklearn.linear_model import Lasso

import bench.__main__ as bench_main
from bench import lasso_vs_sklearn
from bench.timing import add_common_arguments
from unrolled.problems import SparseCoding
from unrolled.solvers import fista

pytestmark = pytest.mark.usefixtures("single_torch_thread")

CELER_INSTALLED = importlib.util.find_spec("celer") is not None
TINY = ["--threads", "1", "--lasso-problems", "5", "--lasso-size", "20", "40", "--lasso-best-of", "1"]


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_common_arguments(parser)
    lasso_vs_sklearn.add_arguments(parser)
    return parser.parse_args(argv)


def _tiny_problems() -> tuple[torch.Tensor, torch.Tensor]:
    """Return A and y of the TINY run: the benchmark's problem at 20 x 40 with 5 test samples."""
    problem = SparseCoding(m=20, n=40, snr_db=lasso_vs_sklearn.SNR_DB, n_test=5)
    y, _ = problem.fixed_set("test")
    return problem.A, y


def _relative_gap(x: torch.Tensor, y: torch.Tensor, A: torch.Tensor, reg: float) -> torch.Tensor:
    """Return (P(x) - D(theta)) / (||y||^2 / 2), written out independently of unrolled.objectives."""
    rho = y - x @ A.T
    theta = rho / torch.clamp((rho @ A).abs().amax(-1) / reg, min=1.0).unsqueeze(-1)
    primal = 0.5 * rho.square().sum(-1) + reg * x.abs().sum(-1)
    dual = 0.5 * y.square().sum(-1) - 0.5 * (y - theta).square().sum(-1)
    return (primal - dual) / (0.5 * y.square().sum(-1))


def _rows(result, reg: str) -> dict[str, list[str]]:
    return {row[1]: row for row in result.rows if row[0] == reg}


def test_lasso_bench_table_and_ratio_line(capsys):
    result = lasso_vs_sklearn.run(_parse(TINY + ["--lasso-regs", "0.01", "0.05", "--lasso-peers", "celer"]))
    result.print_text()
    lines = capsys.readouterr().out.strip().splitlines()

    assert lines[-1].startswith("ratio ")
    assert "(FISTA time / scikit-learn Lasso time, 5 problems 20x40, duality gap <= 1e-6" in lines[-1]
    assert "; reg 0.05: " in lines[-1]
    assert result.columns[4] == "max gap / F(0)"
    for reg in ("0.01", "0.05"):
        rows = _rows(result, reg)
        assert set(rows) == {
            "scikit-learn Lasso", "celer Lasso", "FISTA", "FISTA, gradient restart", "FISTA, function restart",
        }
        assert rows["scikit-learn Lasso"][6] == "1.00"
        if not CELER_INSTALLED:
            # make test installs the test extra only; the peers come with the bench extra.
            assert "not installed" in rows.pop("celer Lasso")
        for row in rows.values():
            assert float(row[4]) <= lasso_vs_sklearn.TARGET_GAP, row
            assert float(row[5]) > 0, row


def test_lasso_bench_reported_settings_reach_target():
    # Rerun every solver of the table with the setting the table reports and check the gap with a
    # formula written out here, not with the one the benchmark uses.
    reg = 0.01
    result = lasso_vs_sklearn.run(_parse(TINY + ["--lasso-regs", str(reg), "--lasso-peers"]))
    A, y = _tiny_problems()
    rows = _rows(result, "0.01")

    sklearn_tol = float(rows["scikit-learn Lasso"][2].removeprefix("tol "))
    model = Lasso(alpha=reg / A.shape[0], fit_intercept=False, tol=sklearn_tol, max_iter=100_000).fit(A.numpy(), y.numpy().T)
    sklearn_gap = _relative_gap(torch.from_numpy(model.coef_), y, A, reg)
    assert float(sklearn_gap.max()) <= lasso_vs_sklearn.TARGET_GAP
    assert float(sklearn_gap.max()) == pytest.approx(float(rows["scikit-learn Lasso"][4]), rel=1e-2)

    for name, restart in lasso_vs_sklearn.FISTA_RESTARTS.items():
        x = fista(A, y, reg, max_iter=20_000, gap_tol=lasso_vs_sklearn.TARGET_GAP, restart=restart).x
        gap = _relative_gap(x, y, A, reg)
        assert float(gap.max()) <= lasso_vs_sklearn.TARGET_GAP, name
        assert float(gap.max()) == pytest.approx(float(rows[name][4]), rel=1e-2), name


def test_lasso_bench_peer_not_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "skglm", None)

    result = lasso_vs_sklearn.run(_parse(TINY + ["--lasso-regs", "0.01", "--lasso-peers", "skglm"]))

    row = _rows(result, "0.01")["skglm Lasso"]
    assert row[5] == "not installed"
    assert result.settings["skglm"] == "not installed"
    assert result.ratio_line.startswith("ratio ")


def test_lasso_bench_options_fit_combined_parser():
    parser = bench_main.build_parser()
    if lasso_vs_sklearn not in bench_main.BENCHMARKS:
        # Raises argparse.ArgumentError when an option clashes with another benchmark's.
        lasso_vs_sklearn.add_arguments(parser.add_argument_group(lasso_vs_sklearn.NAME))

    args = parser.parse_args([])

    assert args.lasso_problems == 1000
    assert tuple(args.lasso_size) == (250, 500)
    assert args.lasso_peers == ["celer", "skglm"]
    assert args.repeats >= 1


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--lasso-problems", "0", "--lasso-problems must be >= 1"),
        ("--lasso-best-of", "0", "--lasso-best-of must be >= 1"),
        ("--lasso-regs", "-0.1", "--lasso-regs must be finite values > 0"),
    ],
)
def test_lasso_bench_invalid_options_rejected(option, value, message):
    with pytest.raises(ValueError, match=message):
        lasso_vs_sklearn.run(_parse(TINY + [option, value]))


def test_lasso_bench_runs_alone(capsys):
    lasso_vs_sklearn.main(TINY + ["--lasso-regs", "0.05", "--lasso-peers"])

    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("ratio ")
    assert "FISTA time / scikit-learn Lasso time" in last


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("skglm") is None, reason="skglm comes with the bench extra")
def test_lasso_bench_with_skglm():
    # skglm compiles its numba kernels on the first fit, which takes several seconds.
    result = lasso_vs_sklearn.run(_parse(TINY + ["--lasso-regs", "0.01", "--lasso-peers", "skglm"]))

    row = _rows(result, "0.01")["skglm Lasso"]
    assert row[2].startswith("tol ")
    assert float(row[4]) <= lasso_vs_sklearn.TARGET_GAP
