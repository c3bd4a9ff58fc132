"""Tests of bilevel problems, their linear solvers and tasks.

Closed-form derivatives are checked against autograd, per-sample oracles against the full-batch ones,
and inner solutions against scikit-learn. Hyperparameter domains and task data are checked too.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from sklearn.linear_model import Lasso, LogisticRegression

from unrolled.bilevel.linear_systems import conjugate_gradient, neumann_series
from unrolled.bilevel.problems import BilevelProblem, HyperCleaning, LassoSelection, RegularisationSelection
from unrolled.bilevel.tasks import clean_only_error, hyper_cleaning, lasso_selection, regularisation_selection, split_dataset, uniform_error

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def _random_problem(kind: str, seed: int = 0):
    """Build a small problem of the given family on random data, with hyperparameters away from the defaults."""
    generator = torch.Generator().manual_seed(seed)
    n, n_val, p = 40, 30, 6
    X = torch.randn(n, p, generator=generator, dtype=torch.float64)
    X_val = torch.randn(n_val, p, generator=generator, dtype=torch.float64)
    if kind == "lasso":
        y, y_val = X[:, 0] - 2 * X[:, 1], X_val[:, 0] - 2 * X_val[:, 1]
        problem = LassoSelection(X, y + 0.1 * torch.randn(n, generator=generator, dtype=torch.float64), X_val, y_val)
        return problem, torch.tensor([0.05], dtype=torch.float64)
    if kind in ("per_feature", "single"):
        y = torch.where(X[:, 0] + 0.5 * torch.randn(n, generator=generator, dtype=torch.float64) > 0, 1, -1)
        y_val = torch.where(X_val[:, 0] > 0, 1, -1)
        problem = RegularisationSelection(X, y, X_val, y_val, "logistic", fit_intercept=True, per_feature=kind == "per_feature")
        hyper = torch.linspace(-2, 1, problem.n_hyper, dtype=torch.float64)
        return problem, hyper
    y = torch.randint(0, 3, (n,), generator=generator)
    y_val = torch.randint(0, 3, (n_val,), generator=generator)
    problem = HyperCleaning(X, y, X_val, y_val, "multinomial", fit_intercept=True, reg_l2=0.1)
    return problem, torch.randn(n, generator=generator, dtype=torch.float64)


KINDS = ("per_feature", "single", "cleaning", "lasso")


@pytest.mark.parametrize("kind", KINDS)
def test_closed_form_derivatives_equal_autograd(kind):
    problem, hyper = _random_problem(kind)
    generator = torch.Generator().manual_seed(1)
    z = torch.randn(problem.dim, problem.n_outputs, generator=generator, dtype=torch.float64)
    v = torch.randn_like(z)
    with torch.no_grad():
        closed = problem.inner_gradient(z, hyper)
    reference = BilevelProblem.inner_gradient(problem, z, hyper)
    torch.testing.assert_close(closed, reference.detach(), rtol=0, atol=1e-13)
    torch.testing.assert_close(problem.inner_hvp(z, hyper, v), BilevelProblem.inner_hvp(problem, z, hyper, v), rtol=0, atol=1e-13)
    # The cross derivative by finite differences of ⟨∇_z G(z, h), v⟩ in h (central, step 1e-6).
    cross = problem.inner_cross(z, hyper, v)
    for j in range(hyper.numel()):
        e = torch.zeros_like(hyper)
        e[j] = 1e-6
        with torch.no_grad():
            difference = ((problem.inner_gradient(z, hyper + e) - problem.inner_gradient(z, hyper - e)) * v).sum() / 2e-6
        assert float(cross[j]) == pytest.approx(float(difference), rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("kind", ("per_feature", "single", "cleaning"))
def test_per_sample_oracles_sum_to_full_batch(kind):
    """Per-sample oracles, summed over every sample, equal the full-batch derivatives."""
    problem, hyper = _random_problem(kind)
    generator = torch.Generator().manual_seed(2)
    z = torch.randn(problem.dim, problem.n_outputs, generator=generator, dtype=torch.float64)
    v = torch.randn_like(z)
    everyone = torch.arange(problem.n_samples)
    reg_gradient, reg_product, reg_cross = problem.regulariser_parts(z, hyper, v)
    with torch.no_grad():
        gradient = problem.expand(everyone, problem.gradient_coefficients(z, hyper, everyone)) + reg_gradient
        torch.testing.assert_close(gradient, problem.inner_gradient(z, hyper), rtol=0, atol=1e-13)
    product = problem.expand(everyone, problem.hvp_coefficients(z, hyper, v, everyone)) + reg_product
    torch.testing.assert_close(product, problem.inner_hvp(z, hyper, v), rtol=0, atol=1e-13)
    cross = reg_cross
    coefficients = problem.cross_coefficients(z, hyper, v, everyone)
    assert (coefficients is None) == (kind != "cleaning")
    if coefficients is not None:
        cross = cross + problem.expand_cross(everyone, coefficients, hyper)
    torch.testing.assert_close(cross, problem.inner_cross(z, hyper, v), rtol=0, atol=1e-13)
    validation = torch.arange(problem.n_val)
    outer = problem.expand(validation, problem.outer_coefficients(z, validation), split="val")
    torch.testing.assert_close(outer, problem.outer_gradients(z, hyper)[0], rtol=0, atol=1e-13)


@functools.lru_cache(maxsize=None)
def _breast_cancer_single():
    return regularisation_selection("breast_cancer", per_feature=False)


def test_logistic_inner_solution_matches_sklearn():
    problem = _breast_cancer_single()
    log_weight = -3.0
    solution = problem.solve_inner(torch.tensor([log_weight], dtype=torch.float64), tol=1e-12)
    assert solution.converged
    assert solution.residual <= 1e-12
    X, y = problem.X[:, :-1].numpy(), problem.y.numpy()
    # (1/n) Σ ψ + (ρ/2)‖w‖² is scikit-learn's C Σ ψ + ½‖w‖² divided by C n, so C = 1/(n ρ).
    C = 1.0 / (problem.n_samples * np.exp(log_weight))
    reference = LogisticRegression(C=C, solver="newton-cholesky", tol=1e-14, max_iter=1000).fit(X, y)
    ours = solution.z[:, 0].numpy()
    np.testing.assert_allclose(ours[:-1], reference.coef_[0], atol=1e-8)
    assert ours[-1] == pytest.approx(reference.intercept_[0], abs=1e-8)


def test_lasso_inner_solution_matches_sklearn():
    problem = lasso_selection()
    weight = 0.05 * problem.reg_max()
    solution = problem.solve_inner(torch.tensor([weight], dtype=torch.float64), tol=1e-12)
    assert solution.converged
    reference = Lasso(alpha=weight, fit_intercept=False, tol=1e-15, max_iter=100_000).fit(problem.X.numpy(), problem.y.numpy())
    np.testing.assert_allclose(solution.z[:, 0].numpy(), reference.coef_, atol=1e-8)
    # The support agrees too, and with it the restriction of the hypergradient.
    assert ((solution.z[:, 0] != 0).numpy() == (reference.coef_ != 0)).all()


def test_lasso_above_reg_max_is_zero():
    """A Lasso weight above reg_max gives the zero solution, with an inner residual of exactly 0."""
    problem = lasso_selection()
    hyper = torch.tensor([1.01 * problem.reg_max()], dtype=torch.float64)
    solution = problem.solve_inner(hyper)
    assert bool((solution.z == 0).all())
    assert problem.inner_residual(solution.z, hyper) == 0.0


def test_linear_solvers_on_spd_system():
    """Conjugate gradient and the Neumann series solve a symmetric positive definite system."""
    generator = torch.Generator().manual_seed(0)
    M = torch.randn(30, 30, generator=generator, dtype=torch.float64)
    H = M @ M.T / 30 + 0.5 * torch.eye(30, dtype=torch.float64)
    b = torch.randn(30, generator=generator, dtype=torch.float64)
    exact = torch.linalg.solve(H, b)
    cg = conjugate_gradient(lambda v: H @ v, b, tol=1e-12)
    assert cg.converged
    assert cg.n_iter <= 30
    torch.testing.assert_close(cg.solution, exact, rtol=0, atol=1e-10)
    lipschitz = float(torch.linalg.eigvalsh(H).max())
    neumann = neumann_series(lambda v: H @ v, b, step_size=1 / lipschitz, tol=1e-10, max_iter=100_000)
    assert neumann.converged
    # Its reported residual is the true relative residual of the returned solution.
    true_residual = float(torch.linalg.vector_norm(H @ neumann.solution - b) / torch.linalg.vector_norm(b))
    assert neumann.residual == pytest.approx(true_residual, rel=1e-6)
    torch.testing.assert_close(neumann.solution, exact, rtol=0, atol=1e-8)
    # A warm start at the solution costs no product.
    assert conjugate_gradient(lambda v: H @ v, b, tol=1e-8, x0=cg.solution).n_iter == 0
    with pytest.raises(ValueError, match="step_size must be > 0"):
        neumann_series(lambda v: H @ v, b, step_size=0.0)


def test_hyperparameter_domain_checks():
    """check_hyper rejects hyperparameters outside their domain, and project_hyper clips them into it."""
    lasso, _ = _random_problem("lasso")
    with pytest.raises(ValueError, match=r"Lasso weight must be one number >= 0, got \[-0.1\]"):
        lasso.solve_inner(torch.tensor([-0.1], dtype=torch.float64))
    assert float(lasso.project_hyper(torch.tensor([-0.1], dtype=torch.float64))[0]) == 0.0
    selection, _ = _random_problem("single")
    with pytest.raises(ValueError, match=r"must lie in \[-12.0, 6.0\]"):
        selection.check_hyper(torch.tensor([-20.0], dtype=torch.float64))
    assert float(selection.project_hyper(torch.tensor([-20.0], dtype=torch.float64))[0]) == -12.0
    with pytest.raises(ValueError, match="expected 1 log ℓ2 weights"):
        selection.check_hyper(torch.zeros(3, dtype=torch.float64))
    cleaning, _ = _random_problem("cleaning")
    with pytest.raises(ValueError, match="one weight logit per training sample"):
        cleaning.check_hyper(torch.zeros(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="must be finite"):
        cleaning.check_hyper(torch.full((cleaning.n_samples,), float("nan"), dtype=torch.float64))
    X, y = cleaning.X[:, :-1], cleaning.y
    with pytest.raises(ValueError, match="reg_l2 must be a finite number > 0"):
        HyperCleaning(X, y, X, y, "multinomial", reg_l2=0.0)
    with pytest.raises(ValueError, match="takes no intercept"):
        LassoSelection(X, y, X, y, fit_intercept=True)


def test_hyper_cleaning_splits_and_corruption():
    """Check the split sizes and that hyper-cleaning corrupts training labels only.

    The training and validation splits together contain as many samples as the dataset's training set.
    """
    splits = split_dataset("digits")
    assert splits.X_train.shape[0] + splits.X_val.shape[0] == splits.dataset.X_train.shape[0]
    task = hyper_cleaning("digits", 0.5, reg_l2=0.03, seed=3)
    problem = task.problem
    assert int(task.corrupted.sum()) == round(0.5 * problem.n_samples)
    clean_labels = splits.y_train.to(problem.dtype)
    assert bool((problem.y[task.corrupted] != clean_labels[task.corrupted]).all())
    assert bool((problem.y[~task.corrupted] == clean_labels[~task.corrupted]).all())
    assert torch.equal(problem.y_val, splits.y_val.to(problem.dtype))
    # Half the labels are wrong, which costs accuracy. Dropping the corrupted samples lowers the error
    # by more than 0.02.
    assert clean_only_error(task) < uniform_error(problem) - 0.02


def test_neumann_residual_at_budget_end():
    """When the budget ends the series, the reported residual is still that of the returned solution."""
    generator = torch.Generator().manual_seed(1)
    M = torch.randn(20, 20, generator=generator, dtype=torch.float64)
    H = M @ M.T / 20 + 0.1 * torch.eye(20, dtype=torch.float64)
    b = torch.randn(20, generator=generator, dtype=torch.float64)
    lipschitz = float(torch.linalg.eigvalsh(H).max())
    result = neumann_series(lambda v: H @ v, b, step_size=1 / lipschitz, tol=1e-12, max_iter=7)
    assert not result.converged
    assert result.n_iter == 7
    true_residual = float(torch.linalg.vector_norm(H @ result.solution - b) / torch.linalg.vector_norm(b))
    assert result.residual == pytest.approx(true_residual, rel=1e-10)
