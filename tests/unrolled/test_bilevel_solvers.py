"""Bilevel solvers: full-batch limits equal the deterministic recursions, convergence to the implicit-gradient optimum, search baselines, traces and input checks."""

from __future__ import annotations

import functools

import pytest
import torch

from unrolled.bilevel.full_batch import grid_search, implicit_gradient_descent, random_search
from unrolled.bilevel.hypergradient import implicit_hypergradient
from unrolled.bilevel.stochastic import saba, soba, stocbio
from unrolled.bilevel.tasks import hyper_cleaning, lasso_selection, regularisation_selection

pytestmark = pytest.mark.usefixtures("single_torch_thread")


@functools.lru_cache(maxsize=None)
def _small_cleaning():
    """Hyper-cleaning on digits restricted to 120 training and 60 validation samples, so a batch can be everything."""
    problem = hyper_cleaning("digits", 0.5, reg_l2=0.1).problem
    X, y = problem.X[:120, :-1], problem.y[:120]
    X_val, y_val = problem.X_val[:60, :-1], problem.y_val[:60]
    return type(problem)(X, y, X_val, y_val, "multinomial", fit_intercept=True, n_classes=10, reg_l2=0.1)


def _joint_reference(problem, n_iter, inner_step, outer_step):
    """The deterministic SOBA/SABA recursion with exact full-batch directions."""
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
def test_full_batch_soba_and_saba_follow_the_deterministic_recursion(method):
    problem = _small_cleaning()
    inner_step, outer_step = 0.5 / problem.inner_lipschitz(problem.initial_hyper()), 50.0
    if method == "saba":
        result = saba(problem, n_iter=30, batch_size=problem.n_samples, inner_step=inner_step, outer_step=outer_step)
    else:
        result = soba(problem, n_iter=30, batch_size=problem.n_samples, inner_step=inner_step, outer_step=outer_step, decreasing=False)
    hyper, z = _joint_reference(problem, 30, inner_step, outer_step)
    torch.testing.assert_close(result.hyper, hyper, rtol=0, atol=1e-10)
    torch.testing.assert_close(result.z, z, rtol=0, atol=1e-10)


def test_full_batch_stocbio_steps_along_the_implicit_hypergradient():
    problem = _small_cleaning()
    hyper0 = problem.initial_hyper()
    # Many inner and Neumann steps on full batches: each outer step is close to an exact implicit step.
    result = stocbio(problem, n_iter=1, batch_size=problem.n_samples, inner_steps=3000, neumann_steps=3000, outer_step=100.0)
    exact = implicit_hypergradient(problem, hyper0, tol=1e-12, inner_tol=1e-10).gradient
    torch.testing.assert_close(result.hyper, hyper0 - 100.0 * exact, rtol=0, atol=1e-4 * 100.0 * float(exact.abs().max()))


@functools.lru_cache(maxsize=None)
def _single_weight():
    problem = regularisation_selection("breast_cancer", per_feature=False)
    reference = implicit_gradient_descent(problem, n_iter=100, eval_every=100)
    return problem, reference


def test_implicit_gradient_descent_reaches_a_stationary_weight_that_a_fine_grid_confirms():
    problem, reference = _single_weight()
    gradient = implicit_hypergradient(problem, reference.hyper, inner_tol=1e-9).gradient
    assert abs(float(gradient[0])) < 1e-7
    grid = grid_search(problem, torch.linspace(-8, -3, 101, dtype=torch.float64)[:, None])
    assert float(grid.hyper[0]) == pytest.approx(float(reference.hyper[0]), abs=0.05)
    assert reference.trace.outer_value[-1] <= min(grid.trace.outer_value) + 1e-12
    assert len(grid.trace.outer_value) == 101 and grid.trace.oracle_calls == sorted(grid.trace.oracle_calls)


def test_saba_with_fixed_steps_converges_where_soba_with_fixed_steps_stalls():
    problem, reference = _single_weight()
    options = dict(n_iter=20_000, batch_size=8, outer_step=0.05, eval_every=20_000, seed=0)
    saba_gap = abs(float(saba(problem, **options).hyper[0] - reference.hyper[0]))
    soba_gap = abs(float(soba(problem, decreasing=False, **options).hyper[0] - reference.hyper[0]))
    assert saba_gap < 1e-3
    assert soba_gap > 10 * saba_gap


def test_lasso_weight_by_implicit_gradient_descent_matches_the_grid_optimum():
    problem = lasso_selection()
    reg_max = problem.reg_max()
    result = implicit_gradient_descent(problem, n_iter=40, outer_step=reg_max, eval_every=40)
    assert float(result.hyper[0]) >= 0
    grid = grid_search(problem, torch.linspace(0, 0.2 * reg_max, 201, dtype=torch.float64)[:, None])
    assert result.trace.outer_value[-1] <= min(grid.trace.outer_value) + 1e-9


def test_random_search_is_reproducible_and_stays_in_its_box():
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
    # Table fill (3n + m) then 3 · 16 + 16 calls per iteration.
    assert trace.oracle_calls[-1] == 3 * problem.n_samples + problem.n_val + 40 * (3 * 16 + 16)
    assert trace.time == sorted(trace.time)
    assert all(value != value for value in trace.test_error)  # NaN: this problem has no test split
    assert all(norm > 0 for norm in trace.hypergradient_norm)


def test_bad_inputs_are_refused():
    problem = _small_cleaning()
    with pytest.raises(ValueError, match=r"batch_size must lie in 1..120"):
        saba(problem, n_iter=1, batch_size=500)
    with pytest.raises(ValueError, match="n_iter must be >= 1"):
        soba(problem, n_iter=0)
    with pytest.raises(ValueError, match="ℓ1 inner term"):
        saba(lasso_selection(), n_iter=1)
    with pytest.raises(FloatingPointError, match=r"saba diverged at iteration \d+"):
        saba(problem, n_iter=500, batch_size=16, inner_step=1000.0, outer_step=1e6)
    with pytest.raises(ValueError, match="inner_step must be > 0"):
        stocbio(problem, n_iter=1, inner_step=-1.0)
    with pytest.raises(ValueError, match=r"grid must have shape \(n_points, n_hyper\)"):
        grid_search(problem, torch.zeros(3))
