"""ISTA and FISTA against scikit-learn, closed forms and the Lasso optimality conditions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.linear_model import Lasso

from unrolled.metrics import nmse_db, nmse_db_per_sample
from unrolled.objectives import lasso_objective
from unrolled.operators import lipschitz_constant, power_iteration
from unrolled.solvers import fista, ista, ista_step

pytestmark = pytest.mark.usefixtures("single_torch_thread")

SOLVERS = {"ista": ista, "fista": fista}


def _lasso_data(m: int, n: int, batch: int | None = None, seed: int = 0, dtype=torch.float64):
    """Return A (m, n) with N(0, 1/m) entries, sparse x_true and y = A x_true + noise of std 0.05."""
    generator = torch.Generator().manual_seed(seed)
    A = torch.randn(m, n, generator=generator, dtype=torch.float64) / math.sqrt(m)
    shape = (n,) if batch is None else (batch, n)
    support = torch.rand(shape, generator=generator, dtype=torch.float64) < 0.1
    x_true = torch.randn(shape, generator=generator, dtype=torch.float64) * support
    y = x_true @ A.T + 0.05 * torch.randn(*shape[:-1], m, generator=generator, dtype=torch.float64)
    return A.to(dtype), y.to(dtype), x_true.to(dtype)


def _sklearn_lasso(A: torch.Tensor, y: torch.Tensor, alpha: float) -> torch.Tensor:
    model = Lasso(alpha=alpha, fit_intercept=False, tol=1e-12, max_iter=100_000)
    model.fit(A.numpy(), y.numpy())
    return torch.from_numpy(model.coef_)


DIAG_A = torch.diag(torch.tensor([3.0, 1.0], dtype=torch.float64))
DIAG_Y = torch.tensor([2.0, -1.5], dtype=torch.float64)


@pytest.mark.parametrize(("case", "max_iter"), [("diagonal", 5000), ("gaussian", 1000)])
def test_ista_step_one_over_L_monotone(case, max_iter):
    if case == "diagonal":
        A, y, lipschitz = DIAG_A, DIAG_Y, 9.0
    else:
        A, y, _ = _lasso_data(20, 30, seed=1)
        lipschitz = power_iteration(A, max_iter=5000)

    result = ista(A, y, 0.1, step_size=1.0 / lipschitz, max_iter=max_iter, trace=True)
    objective = torch.tensor(result.trace.objective, dtype=torch.float64)
    increases = objective[1:] - objective[:-1]

    assert len(objective) == max_iter + 1
    assert float(increases.max()) <= 1e-14 * float(objective[0])
    assert float(objective[-1]) < float(objective[0])


def _ista_step_loop(A: torch.Tensor, y: torch.Tensor, reg: float, step_size: float, max_iter: int) -> torch.Tensor:
    x = torch.zeros(A.shape[1], dtype=A.dtype)
    for _ in range(max_iter):
        x = ista_step(x, A @ x - y, A, step_size, step_size * reg)
    return x


def test_ista_step_above_two_over_L_diverges():
    # For A = diag(3, 1) the error along the first axis is multiplied by 1 - 2.1 = -1.1 per step.
    x = _ista_step_loop(DIAG_A, DIAG_Y, 0.1, 2.1 / 9.0, 300)

    assert float(lasso_objective(x, DIAG_Y, DIAG_A, 0.1)) > 1e20


def test_ista_step_below_two_over_L_converges():
    # The error contracts by |1 - 1.9| = 0.9 per step along the first axis, 0.9^400 < 1e-18.
    x = _ista_step_loop(DIAG_A, DIAG_Y, 0.1, 1.9 / 9.0, 400)
    reference = ista(DIAG_A, DIAG_Y, 0.1, max_iter=400).x

    torch.testing.assert_close(x, reference, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_step_above_two_over_L_rejected(name):
    with pytest.raises(ValueError, match=r"exceeds 2/L = 0\.222222 \(L = \|\|A\|\|_2\^2 = 9\)"):
        SOLVERS[name](DIAG_A, DIAG_Y, 0.1, step_size=2.1 / 9.0, max_iter=10)


@pytest.mark.parametrize("name", sorted(SOLVERS))
@pytest.mark.parametrize("step_size", [0.0, -0.1, math.inf, math.nan])
def test_step_not_positive_finite_rejected(name, step_size):
    with pytest.raises(ValueError, match="step_size must be a positive finite number, got"):
        SOLVERS[name](DIAG_A, DIAG_Y, 0.1, step_size=step_size, max_iter=10)


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_matches_sklearn_lasso(name):
    A, y, _ = _lasso_data(80, 120)
    n_rows = A.shape[0]
    alpha = 0.03 * float((A.T @ y).abs().max()) / n_rows
    expected = _sklearn_lasso(A, y, alpha)

    # scikit-learn minimises ||y - Ax||^2 / (2 n_rows) + alpha ||x||_1, so reg = n_rows * alpha.
    result = SOLVERS[name](A, y, n_rows * alpha, max_iter=50_000, tol=1e-14)

    assert int((expected != 0).sum()) > 10
    torch.testing.assert_close(result.x, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_lasso_optimality_conditions(name):
    # x solves the Lasso iff A^T (y - Ax) = reg * sign(x) on the support and |A^T (y - Ax)| <= reg off it.
    A, y, _ = _lasso_data(80, 120, seed=2)
    reg = 0.05

    x = SOLVERS[name](A, y, reg, max_iter=50_000, tol=1e-14).x
    correlation = A.T @ (y - A @ x)
    support = x != 0

    assert int(support.sum()) > 5
    torch.testing.assert_close(correlation[support], reg * torch.sign(x[support]), rtol=0, atol=1e-9)
    assert float(correlation[~support].abs().max()) <= reg + 1e-9


def _small_lasso_data():
    generator = torch.Generator().manual_seed(3)
    X = torch.randn(30, 3, generator=generator, dtype=torch.float64)
    y = X @ torch.tensor([1.5, 0.0, -0.7], dtype=torch.float64) + 0.3 * torch.randn(30, generator=generator, dtype=torch.float64)
    return X, y


def test_lasso_scaling_half_alpha_max():
    X, y = _small_lasso_data()
    n_rows = X.shape[0]
    alpha_max = float((X.T @ y).abs().max()) / n_rows
    alpha = 0.5 * alpha_max
    expected = _sklearn_lasso(X, y, alpha)

    # scikit-learn divides the data term by n_rows, so reg = n_rows * alpha.
    result = ista(X, y, n_rows * alpha, max_iter=20_000, tol=1e-13)

    assert int((expected != 0).sum()) >= 1
    torch.testing.assert_close(result.x, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("factor", [1.0, 1.5, 10.0])
def test_lasso_scaling_zero_above_alpha_max(factor):
    X, y = _small_lasso_data()
    n_rows = X.shape[0]
    alpha = factor * float((X.T @ y).abs().max()) / n_rows

    # scikit-learn divides the data term by n_rows, so reg = n_rows * alpha.
    result = ista(X, y, n_rows * alpha, max_iter=100)

    assert bool((result.x == 0).all())
    assert bool((_sklearn_lasso(X, y, alpha) == 0).all())


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_batch_equals_single(name):
    A, y, _ = _lasso_data(20, 40, batch=4, seed=4)

    batched = SOLVERS[name](A, y, 0.05, max_iter=100).x

    for i in range(4):
        single = SOLVERS[name](A, y[i], 0.05, max_iter=100).x
        torch.testing.assert_close(batched[i], single, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_batch_leading_dimensions(name):
    A, y, _ = _lasso_data(20, 40, batch=6, seed=4)

    flat = SOLVERS[name](A, y, 0.05, max_iter=100).x
    nested = SOLVERS[name](A, y.reshape(2, 3, 20), 0.05, max_iter=100).x

    assert nested.shape == (2, 3, 40)
    torch.testing.assert_close(nested.reshape(6, 40), flat, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_per_sample_reg_equals_separate_runs(name):
    A, y, _ = _lasso_data(20, 40, batch=4, seed=5)
    regs = [0.01, 0.05, 0.2, 1.0]

    batched = SOLVERS[name](A, y, torch.tensor(regs, dtype=torch.float64).unsqueeze(-1), max_iter=100).x

    for i, reg in enumerate(regs):
        single = SOLVERS[name](A, y[i], reg, max_iter=100).x
        torch.testing.assert_close(batched[i], single, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_float32_matches_float64(name):
    A, y, _ = _lasso_data(30, 50, batch=5, seed=6)

    x64 = SOLVERS[name](A, y, 0.05, max_iter=200).x
    x32 = SOLVERS[name](A.float(), y.float(), 0.05, max_iter=200).x

    assert x32.dtype == torch.float32
    torch.testing.assert_close(x32.double(), x64, rtol=0, atol=1e-4)


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_trace_length_and_columns(name):
    A, y, x_true = _lasso_data(30, 50, batch=8, seed=7)

    result = SOLVERS[name](A, y, 0.02, max_iter=200, x_true=x_true, trace=True)
    trace = result.trace

    assert result.n_iter == 200
    for column, values in trace.as_dict().items():
        assert len(values) == 201, column
    assert trace.objective[0] == pytest.approx(float(0.5 * y.square().sum(-1).mean()), rel=1e-14)
    assert trace.objective[-1] == pytest.approx(float(lasso_objective(result.x, y, A, 0.02).mean()), rel=1e-14)
    assert trace.nmse_db[-1] == pytest.approx(float(nmse_db(result.x, x_true)), rel=1e-12)
    assert trace.nmse_db_per_sample[-1] == pytest.approx(float(nmse_db_per_sample(result.x, x_true)), rel=1e-12)
    assert trace.support_size[-1] == pytest.approx(float((result.x != 0).sum(-1).double().mean()), rel=1e-14)
    assert trace.support_size[0] == 0.0
    assert all(b >= a for a, b in zip(trace.time_s, trace.time_s[1:]))


def test_trace_without_x_true_has_no_nmse():
    A, y, _ = _lasso_data(20, 40, batch=3, seed=8)

    trace = ista(A, y, 0.05, max_iter=10, trace=True).trace

    assert trace.nmse_db == []
    assert trace.nmse_db_per_sample == []
    assert len(trace.objective) == 11


def test_no_trace_by_default():
    A, y, _ = _lasso_data(20, 40, batch=3, seed=8)

    assert ista(A, y, 0.05, max_iter=10).trace is None


def test_ista_trace_objective_non_increasing():
    A, y, _ = _lasso_data(30, 50, batch=8, seed=9)

    objective = np.array(ista(A, y, 0.02, max_iter=500, trace=True).trace.objective)

    assert float(np.diff(objective).max()) <= 1e-14 * objective[0]


def test_fista_beats_ista():
    A, y, _ = _lasso_data(60, 120, batch=16, seed=10)
    reg = 0.01

    ista_objective = ista(A, y, reg, max_iter=300, trace=True).trace.objective
    fista_objective = fista(A, y, reg, max_iter=300, trace=True).trace.objective
    # scikit-learn divides the data term by n_rows, so alpha = reg / n_rows.
    solutions = torch.stack([_sklearn_lasso(A, y[i], reg / A.shape[0]) for i in range(y.shape[0])])
    optimum = float(lasso_objective(solutions, y, A, reg).mean())

    assert fista_objective[-1] < ista_objective[-1]
    assert fista_objective[-1] - optimum < 0.1 * (ista_objective[-1] - optimum)


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_tol_stops_early(name):
    A, y, _ = _lasso_data(20, 40, batch=3, seed=11)

    result = SOLVERS[name](A, y, 0.05, max_iter=100_000, tol=1e-8, trace=True)
    longer = SOLVERS[name](A, y, 0.05, max_iter=result.n_iter + 200)

    assert result.n_iter < 100_000
    assert len(result.trace.objective) == result.n_iter + 1
    torch.testing.assert_close(result.x, longer.x, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_max_iter_zero_returns_start(name):
    A, y, _ = _lasso_data(20, 40, batch=3, seed=12)
    x0 = torch.full((3, 40), 0.1, dtype=torch.float64)

    result = SOLVERS[name](A, y, 0.05, max_iter=0, x0=x0, trace=True)

    assert result.n_iter == 0
    torch.testing.assert_close(result.x, x0, rtol=0, atol=0)
    assert len(result.trace.objective) == 1


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_solution_is_fixed_point(name):
    A, y, _ = _lasso_data(20, 40, seed=13)
    # scikit-learn divides the data term by n_rows, so alpha = reg / n_rows.
    solution = _sklearn_lasso(A, y, 0.05 / A.shape[0])

    restarted = SOLVERS[name](A, y, 0.05, max_iter=50, x0=solution).x

    torch.testing.assert_close(restarted, solution, rtol=0, atol=1e-9)


def test_default_step_is_one_over_lipschitz_constant():
    A, y, _ = _lasso_data(20, 40, batch=3, seed=14)

    default = ista(A, y, 0.05, max_iter=20).x
    explicit = ista(A, y, 0.05, step_size=1.0 / lipschitz_constant(A), max_iter=20).x

    torch.testing.assert_close(default, explicit, rtol=0, atol=0)


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_y_wrong_length(name):
    A = torch.ones(5, 3, dtype=torch.float64)

    with pytest.raises(ValueError, match=r"m = A.shape\[0\] = 5, got shape \(2, 4\)"):
        SOLVERS[name](A, torch.ones(2, 4, dtype=torch.float64), 0.1)


@pytest.mark.parametrize("name", sorted(SOLVERS))
@pytest.mark.parametrize("shape", [(5,), (2, 5, 3)])
def test_A_not_2d(name, shape):
    with pytest.raises(ValueError, match=r"A must be a 2-D \(m, n\) tensor, got shape"):
        SOLVERS[name](torch.ones(shape, dtype=torch.float64), torch.ones(5, dtype=torch.float64), 0.1)


@pytest.mark.parametrize("name", sorted(SOLVERS))
@pytest.mark.parametrize("bad_value", [math.nan, math.inf])
def test_y_not_finite(name, bad_value):
    A, y, _ = _lasso_data(20, 40, batch=3, seed=15)
    y[1, 7] = bad_value

    with pytest.raises(ValueError, match="y contains NaN or Inf entries; expected finite measurements"):
        SOLVERS[name](A, y, 0.1)


@pytest.mark.parametrize("name", sorted(SOLVERS))
@pytest.mark.parametrize("bad_value", [math.nan, -math.inf])
def test_A_not_finite(name, bad_value):
    A, y, _ = _lasso_data(20, 40, batch=3, seed=16)
    A[2, 3] = bad_value

    with pytest.raises(ValueError, match="A contains NaN or Inf entries; expected a finite matrix"):
        SOLVERS[name](A, y, 0.1)


@pytest.mark.parametrize("name", sorted(SOLVERS))
@pytest.mark.parametrize("reg", [-0.1, math.nan, torch.tensor([[0.1], [-0.2], [0.3]])])
def test_reg_invalid(name, reg):
    A, y, _ = _lasso_data(20, 40, batch=3, seed=17)

    with pytest.raises(ValueError, match="reg must be finite and >= 0, got"):
        SOLVERS[name](A, y, reg)


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_max_iter_negative(name):
    A, y, _ = _lasso_data(20, 40, batch=3, seed=18)

    with pytest.raises(ValueError, match="max_iter must be >= 0, got -1"):
        SOLVERS[name](A, y, 0.1, max_iter=-1)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_cuda_matches_cpu(name):
    A, y, x_true = _lasso_data(30, 50, batch=8, seed=19)

    cpu = SOLVERS[name](A, y, 0.02, max_iter=200, x_true=x_true, trace=True)
    cuda = SOLVERS[name](A.cuda(), y.cuda(), 0.02, max_iter=200, x_true=x_true.cuda(), trace=True)

    assert cuda.x.device.type == "cuda"
    torch.testing.assert_close(cuda.x.cpu(), cpu.x, rtol=0, atol=1e-10)
    assert cuda.trace.objective[-1] == pytest.approx(cpu.trace.objective[-1], rel=1e-10)
    assert cuda.trace.nmse_db[-1] == pytest.approx(cpu.trace.nmse_db[-1], rel=1e-8)
