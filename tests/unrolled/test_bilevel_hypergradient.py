"""Tests of hypergradients against finite differences and closed forms.

They also cover the Lasso support case, the approximation warnings, input checks and memory against depth.
"""

from __future__ import annotations

import functools
import re
import warnings

import pytest
import torch

from unrolled.bilevel.hypergradient import ApproximateHypergradientWarning, implicit_hypergradient, unrolled_hypergradient
from unrolled.memory import SavedTensorMemory
from unrolled.bilevel.problems import LassoSelection
from unrolled.bilevel.study.common import finite_differences, relative_error
from unrolled.bilevel.tasks import hyper_cleaning, regularisation_selection

pytestmark = pytest.mark.usefixtures("single_torch_thread")


@functools.lru_cache(maxsize=None)
def _per_feature():
    problem = regularisation_selection("breast_cancer")
    hyper = torch.linspace(-3, 0, problem.n_hyper, dtype=torch.float64)
    return problem, hyper, finite_differences(problem, hyper, range(problem.n_hyper))


@pytest.mark.parametrize("solver", ("cg", "neumann", "direct"))
def test_implicit_hypergradient_matches_finite_differences(solver):
    problem, hyper, reference = _per_feature()
    result = implicit_hypergradient(problem, hyper, solver=solver, tol=1e-11, max_iter=100_000, inner_tol=1e-12)
    assert not result.approximate
    assert result.method == f"implicit-{solver}"
    assert relative_error(result.gradient, reference) < 1e-4


def test_reverse_mode_hypergradient_variants():
    """Full reverse mode matches finite differences, checkpointing changes nothing, and truncation is biased."""
    problem, hyper, reference = _per_feature()
    full = unrolled_hypergradient(problem, hyper, max_iter=3000)
    assert full.method == "unrolled"
    assert not full.approximate
    assert relative_error(full.gradient, reference) < 1e-4
    checkpointed = unrolled_hypergradient(problem, hyper, max_iter=3000, checkpoint_every=100)
    assert checkpointed.method == "unrolled-checkpointed"
    torch.testing.assert_close(checkpointed.gradient, full.gradient, rtol=1e-12, atol=0)
    truncated = unrolled_hypergradient(problem, hyper, max_iter=3000, truncate=20)
    assert truncated.method == "truncated"
    assert truncated.approximate
    # Keeping the last 20 of 3,000 steps drops most of the gradient's history, so the bias is visible.
    assert relative_error(truncated.gradient, reference) > 1e-2


def test_hyper_cleaning_hypergradient_matches_finite_differences():
    problem = hyper_cleaning("digits", 0.5, reg_l2=0.03).problem
    hyper = 0.5 * torch.randn(problem.n_hyper, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    coordinates = list(range(0, problem.n_hyper, problem.n_hyper // 6))
    reference = finite_differences(problem, hyper, coordinates, eps=1e-6, tol=1e-12)
    result = implicit_hypergradient(problem, hyper, tol=1e-12, inner_tol=1e-11)
    assert relative_error(result.gradient[coordinates], reference) < 1e-4


def test_implicit_error_tracks_inner_residual():
    """The implicit hypergradient error falls as the inner residual falls."""
    problem, hyper, reference = _per_feature()
    errors, residuals = [], []
    for max_iter in (10, 100, 1000, 10_000):
        z = unrolled_hypergradient(problem, hyper, max_iter=max_iter, truncate=1, inner_tol=None).z
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ApproximateHypergradientWarning)
            result = implicit_hypergradient(problem, hyper, z, inner_tol=1e-9)
        # Only the last inner point is below the tolerance, so only the first three warn.
        assert (len(caught) == 1) == (max_iter < 10_000)
        residuals.append(result.inner_residual)
        errors.append(relative_error(result.gradient, reference))
    assert residuals == sorted(residuals, reverse=True)
    assert errors == sorted(errors, reverse=True)
    assert errors[0] > 1e-2
    assert errors[-1] < 1e-5


@functools.lru_cache(maxsize=None)
def _sparse_lasso():
    """Build a Lasso with more features than samples: n = 100 samples, p = 1000 features and a 4-sparse solution."""
    generator = torch.Generator().manual_seed(0)
    n, p = 100, 1000
    X = torch.randn(n, p, generator=generator, dtype=torch.float64)
    beta = torch.zeros(p, dtype=torch.float64)
    beta[:4] = torch.tensor([3.0, -2.0, 1.5, 2.5], dtype=torch.float64)
    y = X @ beta + 0.1 * torch.randn(n, generator=generator, dtype=torch.float64)
    X_val = torch.randn(50, p, generator=generator, dtype=torch.float64)
    problem = LassoSelection(X, y, X_val, X_val @ beta)
    hyper = torch.tensor([0.3 * problem.reg_max()], dtype=torch.float64)
    return problem, hyper


def test_lasso_support_hypergradient():
    """On the support, the Lasso hypergradient matches the closed form, finite differences and unrolled ISTA."""
    problem, hyper = _sparse_lasso()
    solution = problem.solve_inner(hyper, tol=1e-12)
    support = solution.z[:, 0] != 0
    assert int(support.sum()) == 4
    result = implicit_hypergradient(problem, hyper, solution.z, inner_tol=1e-11)
    # In the ½ scaling with A = X/√n, the closed form is dβ_S/dλ = −(A_SᵀA_S)⁻¹ sign(β_S), and 0 off S.
    A_S = problem.X[:, support] / problem.n_samples**0.5
    jacobian = -torch.linalg.solve(A_S.T @ A_S, torch.sign(solution.z[support, 0]))
    closed_form = float(problem.outer_gradients(solution.z, hyper)[0][support, 0] @ jacobian)
    assert float(result.gradient[0]) == pytest.approx(closed_form, rel=1e-8)
    assert float(result.gradient[0]) == pytest.approx(float(finite_differences(problem, hyper, [0], eps=1e-6)[0]), rel=1e-3)
    unrolled = unrolled_hypergradient(problem, hyper, max_iter=1000)
    assert float(result.gradient[0]) == pytest.approx(float(unrolled.gradient[0]), rel=1e-3)


def test_lasso_full_system_warns():
    """Over all coordinates, the Lasso linear system is singular, so the solve warns and its result is far off."""
    problem, hyper = _sparse_lasso()
    solution = problem.solve_inner(hyper, tol=1e-12)
    correct = implicit_hypergradient(problem, hyper, solution.z, inner_tol=1e-11).gradient
    with pytest.warns(UserWarning, match="restrict_to_support=False"), pytest.warns(ApproximateHypergradientWarning, match="linear system"):
        wrong = implicit_hypergradient(problem, hyper, solution.z, solver="direct", restrict_to_support=False, inner_tol=1e-11).gradient
    # XᵀX/n has rank 100 for 1,000 unknowns, so the solve returns values many orders of magnitude off.
    assert abs(float(wrong[0])) > 1e6 * abs(float(correct[0]))


def test_unconverged_solves_warn():
    """An unconverged inner point or linear system warns with its residual and flags the result approximate."""
    problem, hyper, _ = _per_feature()
    with pytest.warns(ApproximateHypergradientWarning, match=r"inner point has residual [0-9.e+-]+, above its tolerance 1e-09.*pass z=None"):
        result = implicit_hypergradient(problem, hyper, problem.initial_inner(), inner_tol=1e-9)
    assert result.approximate
    assert result.inner_residual > 1e-9
    with pytest.warns(ApproximateHypergradientWarning, match=r"linear system has residual .* Raise max_iter \(now 2\)"):
        result = implicit_hypergradient(problem, hyper, max_iter=2, inner_tol=1e-9)
    assert result.approximate
    assert result.linear_residual > 1e-10
    assert result.n_products == 2
    with pytest.warns(ApproximateHypergradientWarning, match=r"last inner iterate has residual .* Raise max_iter \(now 5\)"):
        assert unrolled_hypergradient(problem, hyper, max_iter=5, inner_tol=1e-9).approximate
    # The default tolerance (1e-6) flags a short unrolled run too.
    with pytest.warns(ApproximateHypergradientWarning):
        assert unrolled_hypergradient(problem, hyper, max_iter=10).approximate


def test_invalid_arguments_raise():
    problem, hyper, _ = _per_feature()
    with pytest.raises(ValueError, match=re.escape("solver must be one of cg, neumann, direct, got 'lu'")):
        implicit_hypergradient(problem, hyper, solver="lu")
    with pytest.raises(ValueError, match=r"step_size must lie in \(0, 2/L\]"):
        unrolled_hypergradient(problem, hyper, max_iter=10, step_size=-1.0)
    with pytest.raises(ValueError, match=r"z must have the inner variable's shape \(31, 1\), got \(3,\)"):
        implicit_hypergradient(problem, hyper, torch.zeros(3, dtype=torch.float64))
    # A list of floats is accepted as hyperparameters, and a bare number where there is one hyperparameter.
    assert implicit_hypergradient(problem, hyper.tolist()).gradient.shape == hyper.shape
    lasso, lasso_weight = _sparse_lasso()
    assert implicit_hypergradient(lasso, float(lasso_weight[0])).gradient.shape == (1,)
    with pytest.raises(ValueError, match=r"truncate must lie in 1..max_iter \(10\), got 11"):
        unrolled_hypergradient(problem, hyper, max_iter=10, truncate=11)
    with pytest.raises(ValueError, match="max_iter must be >= 1"):
        unrolled_hypergradient(problem, hyper, max_iter=0)
    with pytest.raises(ValueError, match="checkpoint_every must be >= 1"):
        unrolled_hypergradient(problem, hyper, max_iter=10, checkpoint_every=0)


def test_hypergradient_memory_against_depth():
    """Reverse-mode memory grows affinely with the depth K, and checkpointing and implicit differentiation stay far below it."""
    problem, hyper, _ = _per_feature()

    def peak(function) -> int:
        with SavedTensorMemory() as meter:
            function()
        assert meter.current_bytes == 0  # every saved tensor was released with its graph
        return meter.peak_bytes

    reverse = {K: peak(lambda K=K: unrolled_hypergradient(problem, hyper, max_iter=K, inner_tol=None)) for K in (50, 100, 200)}
    # Memory is affine in K: the data saved once plus the same amount per step. So 100 more steps cost
    # twice as much as 50 more.
    assert reverse[200] - reverse[100] == pytest.approx(2 * (reverse[100] - reverse[50]), rel=0.01)
    assert reverse[100] - reverse[50] > 0.5 * reverse[50]
    checkpointed = peak(lambda: unrolled_hypergradient(problem, hyper, max_iter=200, checkpoint_every=10, inner_tol=None))
    assert checkpointed < reverse[200] / 5
    solution = problem.solve_inner(hyper, tol=1e-12)
    implicit = peak(lambda: implicit_hypergradient(problem, hyper, solution.z))
    assert implicit < reverse[50] / 10
