"""Tests of bilevel solvers.

Full-batch limits must equal the deterministic recursions, and the solvers must converge to the
implicit-gradient optimum. The search baselines, traces and input checks are tested too.
"""

from __future__ import annotations

import functools

import pytest
import torch

from unrolled.bilevel.full_batch import grid_search, implicit_gradient_descent, random_search
from unrolled.bilevel.hypergradient import implicit_hypergradient
from unrolled.bilevel.problems import HyperCleaning
from unrolled.bilevel.stochastic import saba, soba, stocbio
from unrolled.bilevel.tasks import hyper_cleaning, lasso_selection, regularisation_selection

pytestmark = pytest.mark.usefixtures("single_torch_thread")


@functools.lru_cache(maxsize=None)
def _small_cleaning():
    """Build hyper-cleaning on digits restricted to 120 training and 60 validation samples, so one batch can hold every sample."""
    problem = hyper_cleaning("digits", 0.5, reg_l2=0.1).problem
    X, y = problem.X[:120, :-1], problem.y[:120]
    X_val, y_val = problem.X_val[:60, :-1], problem.y_val[:60]
    return type(problem)(X, y, X_val, y_val, "multinomial", fit_intercept=True, n_classes=10, reg_l2=0.1)


def _joint_reference(problem, n_iter, inner_step, outer_step):
    """Run the deterministic SOBA/SABA recursion with exact full-batch directions and return (hyper, z)."""
    hyper = problem.initial_hyper()
    z = problem.solve_inner(hyper, tol=1e-7).z
    v = torch.zeros_like(z)
    for _ in range(n_iter):
        with torch.no_grad():
            direction_z = problem.inner_gradient(z, hyper)
        direction_v = problem.inner_hvp(z, hyper, v) + problem.outer_gradients(z, hyper)[0]
        direction_h = problem.inner_cross(z, hyper, v)
        z, v, hyper = z - inner_step * direction_z, v - inner_step * direction_v, hyper - outer_step * direction_h
    return hyper, z


@pytest.mark.parametrize("method", ("soba-fixed", "saba"))
def test_full_batch_follows_deterministic_recursion(method):
    """Full-batch SOBA with fixed steps and full-batch SABA follow the deterministic recursion."""
    problem = _small_cleaning()
    inner_step, outer_step = 0.5 / problem.inner_lipschitz(problem.initial_hyper()), 50.0
    if method == "saba":
        result = saba(problem, n_iter=30, batch_size=problem.n_samples, inner_step=inner_step, outer_step=outer_step)
    else:
        result = soba(problem, n_iter=30, batch_size=problem.n_samples, inner_step=inner_step, outer_step=outer_step, decreasing=False)
    hyper, z = _joint_reference(problem, 30, inner_step, outer_step)
    torch.testing.assert_close(result.hyper, hyper, rtol=0, atol=1e-10)
    torch.testing.assert_close(result.z, z, rtol=0, atol=1e-10)


def test_full_batch_stocbio_takes_implicit_step():
    """Full-batch stocBiO steps along the implicit hypergradient."""
    problem = _small_cleaning()
    hyper0 = problem.initial_hyper()
    # With many inner and Neumann steps on full batches, each outer step is close to an exact implicit step.
    result = stocbio(problem, n_iter=1, batch_size=problem.n_samples, inner_steps=3000, neumann_steps=3000, outer_step=100.0)
    exact = implicit_hypergradient(problem, hyper0, tol=1e-12, inner_tol=1e-10).gradient
    torch.testing.assert_close(result.hyper, hyper0 - 100.0 * exact, rtol=0, atol=1e-4 * 100.0 * float(exact.abs().max()))


@functools.lru_cache(maxsize=None)
def _single_weight():
    problem = regularisation_selection("breast_cancer", per_feature=False)
    reference = implicit_gradient_descent(problem, n_iter=100, eval_every=100)
    return problem, reference


def test_implicit_gd_matches_grid_optimum():
    """Implicit gradient descent reaches a stationary weight, and a fine grid confirms it."""
    problem, reference = _single_weight()
    gradient = implicit_hypergradient(problem, reference.hyper, inner_tol=1e-9).gradient
    assert abs(float(gradient[0])) < 1e-7
    grid = grid_search(problem, torch.linspace(-8, -3, 101, dtype=torch.float64)[:, None])
    assert float(grid.hyper[0]) == pytest.approx(float(reference.hyper[0]), abs=0.05)
    assert reference.trace.outer_value[-1] <= min(grid.trace.outer_value) + 1e-12
    assert len(grid.trace.outer_value) == 101
    assert grid.trace.oracle_calls == sorted(grid.trace.oracle_calls)


def test_fixed_step_saba_beats_soba():
    """With fixed steps, SABA converges where SOBA stalls."""
    problem, reference = _single_weight()
    options = dict(n_iter=20_000, batch_size=8, outer_step=0.05, eval_every=20_000, seed=0)
    saba_gap = abs(float(saba(problem, **options).hyper[0] - reference.hyper[0]))
    soba_gap = abs(float(soba(problem, decreasing=False, **options).hyper[0] - reference.hyper[0]))
    assert saba_gap < 1e-3
    assert soba_gap > 10 * saba_gap


def test_lasso_weight_matches_grid_optimum():
    """Implicit gradient descent on the Lasso weight does at least as well as the best point of a grid."""
    problem = lasso_selection()
    reg_max = problem.reg_max()
    result = implicit_gradient_descent(problem, n_iter=40, outer_step=reg_max, eval_every=40)
    assert float(result.hyper[0]) >= 0
    grid = grid_search(problem, torch.linspace(0, 0.2 * reg_max, 201, dtype=torch.float64)[:, None])
    assert result.trace.outer_value[-1] <= min(grid.trace.outer_value) + 1e-9


def test_random_search_reproducible_within_box():
    """Random search with a fixed seed repeats itself and returns a point inside its box."""
    problem, _ = _single_weight()
    first = random_search(problem, 8, -8.0, -2.0, seed=4)
    second = random_search(problem, 8, -8.0, -2.0, seed=4)
    assert torch.equal(first.hyper, second.hyper)
    assert first.trace.outer_value == second.trace.outer_value
    assert -8.0 <= float(first.hyper[0]) <= -2.0
    assert first.trace.outer_value[[float(v) for v in first.trace.outer_value].index(min(first.trace.outer_value))] == min(first.trace.outer_value)


def test_traces_record_time_calls_and_test_scores():
    problem = _small_cleaning()
    result = saba(problem, n_iter=40, batch_size=16, outer_step=10.0, eval_every=10, hypergradient_norm=True)
    trace = result.trace
    assert trace.iteration == [0, 10, 20, 30, 40]
    assert trace.oracle_calls[0] == 0
    # Filling the SABA tables costs 3n + m calls: a gradient, a Hessian-vector product and a cross
    # derivative per training sample, and an outer gradient per validation sample. Each iteration then
    # costs 3 · 16 + 16 calls with batches of 16.
    assert trace.oracle_calls[-1] == 3 * problem.n_samples + problem.n_val + 40 * (3 * 16 + 16)
    assert trace.time == sorted(trace.time)
    assert all(value != value for value in trace.test_error)  # NaN because this problem has no test split
    assert all(norm > 0 for norm in trace.hypergradient_norm)


def test_invalid_inputs_raise():
    problem = _small_cleaning()
    with pytest.raises(ValueError, match=r"batch_size must lie in 1..120"):
        saba(problem, n_iter=1, batch_size=500)
    with pytest.raises(ValueError, match="n_iter must be >= 1"):
        soba(problem, n_iter=0)
    with pytest.raises(ValueError, match="ℓ1 inner term"):
        saba(lasso_selection(), n_iter=1)
    with pytest.raises(ValueError, match=r"inner_step must lie in \(0, 2/L\]"):
        saba(problem, n_iter=1, inner_step=1000.0)
    with pytest.raises(ValueError, match=r"inner_step must lie in \(0, 2/L\]"):
        stocbio(problem, n_iter=1, inner_step=-1.0)
    with pytest.raises(ValueError, match=r"neumann_step must lie in \(0, 2/L\].*Leave it None for 1/L"):
        stocbio(problem, n_iter=1, neumann_step=-1.0)
    with pytest.raises(ValueError, match="outer_step must be a finite number > 0, got -1.0"):
        soba(problem, n_iter=1, outer_step=-1.0)
    with pytest.raises(ValueError, match="inner_steps must be >= 1"):
        stocbio(problem, n_iter=1, inner_steps=0)
    with pytest.raises(ValueError, match=r"grid must have shape \(n_points, n_hyper\)"):
        grid_search(problem, torch.zeros(3))
    with pytest.raises(ValueError, match=r"low lies outside the hyperparameter domain: the Lasso weight must be one number >= 0"):
        random_search(lasso_selection(), 5, -3.0, 1.0)
    with pytest.raises(ValueError, match=r"corruption must lie in \[0, 1\)"):
        hyper_cleaning("digits", 1.5, reg_l2=0.1)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_saba_cuda_matches_cpu():
    """SABA mini-batches on CUDA follow the CPU run."""
    options = dict(n_iter=200, batch_size=64, outer_step=30.0, eval_every=100, seed=1)
    cpu = saba(hyper_cleaning("digits", 0.5, reg_l2=0.03).problem, **options)
    cuda = saba(hyper_cleaning("digits", 0.5, reg_l2=0.03, device="cuda").problem, **options)
    assert cuda.hyper.device.type == "cuda"
    torch.testing.assert_close(cuda.hyper.cpu(), cpu.hyper, rtol=0, atol=1e-8)
    assert cuda.trace.test_error == pytest.approx(cpu.trace.test_error, abs=1e-12)


class _NaNAfterTenCalls(HyperCleaning):
    """Hyper-cleaning whose sampled gradients turn NaN after ten calls, to reach the divergence check."""

    calls = 0

    def gradient_coefficients(self, z, hyper, index):
        self.calls += 1
        coefficients = super().gradient_coefficients(z, hyper, index)
        return coefficients * float("nan") if self.calls > 10 else coefficients


def test_non_finite_iterate_raises():
    small = _small_cleaning()
    problem = _NaNAfterTenCalls(small.X[:, :-1], small.y, small.X_val[:, :-1], small.y_val, "multinomial", fit_intercept=True, n_classes=10, reg_l2=0.1)
    with pytest.raises(FloatingPointError, match=r"soba diverged at iteration \d+ \(non-finite iterate\)"):
        soba(problem, n_iter=50, batch_size=16)
