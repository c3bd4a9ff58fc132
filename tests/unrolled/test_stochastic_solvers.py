"""SGD, SVRG, L-SVRG, SAGA and SARAH on finite sums: scikit-learn agreement, a plain reference loop, weights, variance and input checks.

The reference solutions come from scikit-learn on its shipped datasets. For logistic regression
they come from the second-order solvers (newton-cholesky, newton-cg) at tol=1e-14. On standardised
breast cancer with C = 1, scikit-learn 1.9.1's lbfgs at tol=1e-12 stops on its relative-decrease
test with a gradient of about 1e-8, 1.1e-6 away from the newton-cholesky solution, so it cannot
serve as a 1e-6 reference there.
"""

from __future__ import annotations

import functools
import math
import re

import numpy as np
import pytest
import torch
from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits
from sklearn.linear_model import Lasso, LogisticRegression
from sklearn.preprocessing import StandardScaler

from unrolled.problems.finite_sum import FiniteSum, reg_from_sklearn_alpha, reg_l2_from_sklearn_C
from unrolled.solvers.saga import saga, saga_direction
from unrolled.solvers.sarah import sarah, sarah_direction
from unrolled.solvers.sgd import sgd, sgd_direction
from unrolled.solvers.stochastic import Sampler, batch_smoothness, proximal_step
from unrolled.solvers.svrg import svrg, svrg_direction

pytestmark = pytest.mark.usefixtures("single_torch_thread")

METHODS = ("SGD", "SVRG", "L-SVRG", "SAGA", "SARAH")
VARIANCE_REDUCED = ("SVRG", "L-SVRG", "SAGA", "SARAH")
# Default steps as the solvers' docstrings state them: factor / L_b.
DEFAULT_STEP_FACTORS = {"SGD": 1.0, "SVRG": 1.0 / 3.0, "L-SVRG": 1.0 / 3.0, "SAGA": 1.0 / 3.0, "SARAH": 0.5}


def _run(method: str, problem: FiniteSum, **options):
    """Run ``method`` on ``problem`` through its public function."""
    if method == "SGD":
        return sgd(problem, **options)
    if method == "SVRG":
        return svrg(problem, **options)
    if method == "L-SVRG":
        return svrg(problem, loopless=True, **options)
    if method == "SAGA":
        return saga(problem, **options)
    return sarah(problem, **options)


def _max_difference(a, b) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).max())


# Datasets and scikit-learn references, computed once per test run.


@functools.cache
def _breast_cancer() -> tuple[np.ndarray, np.ndarray]:
    """Standardised breast-cancer features (569 x 30) and labels 0/1."""
    X, y = load_breast_cancer(return_X_y=True)
    return StandardScaler().fit_transform(X), y


@functools.cache
def _diabetes() -> tuple[np.ndarray, np.ndarray]:
    """Standardised diabetes features (442 x 10) and the raw targets."""
    X, y = load_diabetes(return_X_y=True)
    return StandardScaler().fit_transform(X), y


@functools.cache
def _digits() -> tuple[np.ndarray, np.ndarray]:
    """Standardised digits features (1797 x 64, where the constant pixels become 0) and labels 0..9."""
    X, y = load_digits(return_X_y=True)
    return StandardScaler().fit_transform(X), y


def _n_breast_cancer() -> int:
    return len(_breast_cancer()[1])


def _breast_cancer_problem(**options) -> FiniteSum:
    X, y = _breast_cancer()
    return FiniteSum(torch.from_numpy(X), torch.from_numpy(2.0 * y - 1.0), "logistic", fit_intercept=True, **options)


def _diabetes_lasso(alpha: float = 1.0) -> FiniteSum:
    X, y = _diabetes()
    return FiniteSum(torch.from_numpy(X), torch.from_numpy(y), "squared", reg=reg_from_sklearn_alpha(alpha), fit_intercept=True)


@functools.cache
def _sklearn_l2_logistic(C: float, weight_seed: int | None = None) -> np.ndarray:
    """Return scikit-learn's ℓ2 logistic solution on breast cancer as (coefficients, intercept)."""
    X, y = _breast_cancer()
    weights = None if weight_seed is None else _integer_weights(len(y), weight_seed)
    model = LogisticRegression(C=C, solver="newton-cholesky", tol=1e-14, max_iter=1000).fit(X, y, sample_weight=weights)
    return np.concatenate([model.coef_[0], model.intercept_])


@functools.cache
def _sklearn_l1_logistic(C: float) -> np.ndarray:
    X, y = _breast_cancer()
    model = LogisticRegression(C=C, l1_ratio=1.0, solver="saga", tol=1e-14, max_iter=100_000).fit(X, y)
    assert model.n_iter_[0] < 100_000
    return np.concatenate([model.coef_[0], model.intercept_])


@functools.cache
def _sklearn_lasso(alpha: float) -> np.ndarray:
    X, y = _diabetes()
    model = Lasso(alpha=alpha, tol=1e-14, max_iter=100_000).fit(X, y)
    return np.concatenate([model.coef_, [model.intercept_]])


@functools.cache
def _sklearn_multinomial(C: float) -> tuple[np.ndarray, np.ndarray]:
    X, y = _digits()
    model = LogisticRegression(C=C, solver="newton-cg", tol=1e-14, max_iter=1000).fit(X, y)
    return model.coef_, model.intercept_


def _integer_weights(n: int, seed: int) -> np.ndarray:
    """Return seeded integer sample weights in {0, 1, 2, 3}."""
    return np.random.default_rng(seed).integers(0, 4, n).astype(np.float64)


def _small_problem(loss: str = "logistic", n: int = 40, p: int = 5, seed: int = 0, **options) -> FiniteSum:
    """Return a seeded synthetic problem with Gaussian features."""
    generator = np.random.default_rng(seed)
    X = generator.standard_normal((n, p))
    if loss == "squared":
        y = X @ generator.standard_normal(p) + 0.3 * generator.standard_normal(n)
    elif loss == "logistic":
        y = np.where(X @ generator.standard_normal(p) + generator.standard_normal(n) > 0, 1.0, -1.0)
    else:
        y = (np.arange(n) % 3).astype(np.float64)
    return FiniteSum(torch.from_numpy(X), torch.from_numpy(y), loss, **options)


# Agreement with scikit-learn.


@pytest.mark.parametrize("method", VARIANCE_REDUCED)
def test_l2_logistic_matches_sklearn(method):
    """ℓ2 logistic regression on breast cancer (C = 1, intercept) matches scikit-learn to 1e-6 in every coefficient."""
    C = 1.0
    expected = _sklearn_l2_logistic(C)
    problem = _breast_cancer_problem(reg_l2=reg_l2_from_sklearn_C(C, _n_breast_cancer()))

    W = _run(method, problem, sampling="importance", max_epochs=500).W

    assert _max_difference(W[:, 0], expected) <= 1e-6
    assert float(problem.gradient(W).abs().max()) <= 1e-9


@pytest.mark.parametrize("method", ["SAGA", "SVRG", "SARAH"])
def test_l1_logistic_matches_sklearn(method):
    """ℓ1 logistic regression on breast cancer (C = 0.05, intercept) matches scikit-learn's SAGA to 1e-6, same support."""
    C = 0.05
    expected = _sklearn_l1_logistic(C)
    # scikit-learn minimises C Σψ_i + ‖w‖₁. Divided by C n, this is our mean plus ‖w‖₁/(C n).
    problem = _breast_cancer_problem(reg=reg_l2_from_sklearn_C(C, _n_breast_cancer()))

    W = _run(method, problem, sampling="importance", max_epochs=200).W

    coefficients = W[:-1, 0].numpy()
    assert _max_difference(W[:, 0], expected) <= 1e-6
    np.testing.assert_array_equal(coefficients != 0, expected[:-1] != 0)
    assert 0 < int((coefficients != 0).sum()) < 30


@pytest.mark.parametrize("method", ["SAGA", "SVRG", "SARAH"])
def test_l1_logistic_solution_meets_optimality_conditions(method):
    """The ℓ1 solution satisfies -∇_j = reg·sign(w_j) on its support, |∇_j| ≤ reg off it, and ∇ = 0 on the intercept."""
    problem = _breast_cancer_problem(reg=reg_l2_from_sklearn_C(0.05, _n_breast_cancer()))

    W = _run(method, problem, sampling="importance", max_epochs=200).W
    gradient = problem.gradient(W)[:, 0]
    coefficients = W[:-1, 0]
    support = coefficients != 0

    torch.testing.assert_close(-gradient[:-1][support], problem.reg * torch.sign(coefficients[support]), rtol=0, atol=1e-10)
    assert float(gradient[:-1][~support].abs().max()) <= problem.reg
    assert abs(float(gradient[-1])) <= 1e-10


@pytest.mark.parametrize("method", VARIANCE_REDUCED)
def test_lasso_matches_sklearn(method):
    """The Lasso on standardised diabetes (alpha = 1, intercept) matches scikit-learn's Lasso to 1e-6, same support."""
    expected = _sklearn_lasso(1.0)
    problem = _diabetes_lasso(1.0)

    W = _run(method, problem, sampling="uniform", max_epochs=60).W

    assert _max_difference(W[:, 0], expected) <= 1e-6
    np.testing.assert_array_equal(W[:-1, 0].numpy() != 0, expected[:-1] != 0)
    assert int((expected[:-1] == 0).sum()) >= 2


@pytest.mark.parametrize("method", ["SAGA", "SVRG"])
def test_multinomial_logistic_matches_sklearn(method):
    """Multinomial ℓ2 logistic regression on digits (C = 0.01, intercept) matches scikit-learn to 1e-6.

    Both parametrisations carry one weight vector per class, which is over-complete. The ℓ2 term
    makes the minimiser unique, and its coefficients sum to 0 over the classes. The unpenalised
    intercepts are unique only up to a common shift, so they are compared after centring.
    """
    C = 0.01
    expected_coefficients, expected_intercepts = _sklearn_multinomial(C)
    X, y = _digits()
    labels = torch.from_numpy(y.astype(np.float64))
    problem = FiniteSum(torch.from_numpy(X), labels, "multinomial", reg_l2=reg_l2_from_sklearn_C(C, len(y)), fit_intercept=True)

    W = _run(method, problem, sampling="importance", max_epochs=100).W.numpy()

    assert W.shape == (65, 10)
    assert _max_difference(W[:64].T, expected_coefficients) <= 1e-6
    intercepts = W[64] - W[64].mean()
    assert _max_difference(intercepts, expected_intercepts - expected_intercepts.mean()) <= 1e-6
    assert float(np.abs(expected_coefficients.sum(axis=0)).max()) <= 1e-12
    assert float(np.abs(W[:64].sum(axis=1)).max()) <= 1e-12


@pytest.mark.parametrize("method", ["SAGA", "SVRG"])
def test_weighted_logistic_matches_sklearn(method):
    """Integer sample weights (0 to 3) on breast cancer match scikit-learn's ``sample_weight`` with reg_l2 = 1/(C Σs)."""
    weights = _integer_weights(_n_breast_cancer(), seed=0)
    expected = _sklearn_l2_logistic(1.0, weight_seed=0)
    reg_l2 = reg_l2_from_sklearn_C(1.0, float(weights.sum()))
    problem = _breast_cancer_problem(reg_l2=reg_l2, sample_weight=torch.from_numpy(weights))

    W = _run(method, problem, sampling="importance", max_epochs=800).W

    assert _max_difference(W[:, 0], expected) <= 1e-6


def test_sgd_decreasing_step_converges():
    """SGD with the step γ₀/(1 + epochs) reaches F − F* ≤ 1e-4 on ℓ2 logistic regression (C = 0.1), below the constant-step floor.

    SGD converges sublinearly, so the tolerance is looser than the variance-reduced methods' 1e-6
    in the coefficients: 1e-4 in the objective (F* ≈ 0.116) and 5e-2 in the coefficients.
    """
    expected = _sklearn_l2_logistic(0.1)
    problem = _breast_cancer_problem(reg_l2=reg_l2_from_sklearn_C(0.1, _n_breast_cancer()))
    f_star = problem.objective(torch.from_numpy(expected)[:, None])
    options = {"sampling": "importance", "batch_size": 8, "max_epochs": 1000, "trace": True, "f_star": f_star}

    decreasing = sgd(problem, schedule="inverse", **options)
    constant = sgd(problem, schedule="constant", **options)

    gaps = decreasing.trace.suboptimality
    assert gaps[-1] <= 1e-4
    assert gaps[-1] <= 0.5 * gaps[100]
    assert _max_difference(decreasing.W[:, 0], expected) <= 5e-2
    assert constant.trace.suboptimality[-1] >= 10 * gaps[-1]


def test_tolerance_stops_at_first_epoch_below_it():
    """With ``tol`` and ``f_star`` the run stops after the first epoch whose suboptimality is at most tol."""
    problem = _diabetes_lasso(1.0)
    f_star = problem.objective(torch.from_numpy(_sklearn_lasso(1.0))[:, None])

    result = svrg(problem, max_epochs=200, tol=1e-8, f_star=f_star, trace=True)
    gaps = result.trace.suboptimality

    assert 1 <= result.n_epochs < 200
    assert len(gaps) == result.n_epochs + 1
    assert gaps[-1] <= 1e-8
    assert min(gaps[:-1]) > 1e-8


# Dense and sparse storage against a plain reference loop.


def _sparse_logistic_data(n: int = 60, p: int = 12, seed: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Return features with about 70% zeros and all-zero features 3 and 8, and labels ±1."""
    generator = np.random.default_rng(seed)
    X = generator.standard_normal((n, p)) * (generator.random((n, p)) < 0.3)
    X[:, [3, 8]] = 0.0
    y = np.where(X @ generator.standard_normal(p) + 0.5 * generator.standard_normal(n) > 0, 1.0, -1.0)
    return torch.from_numpy(X), torch.from_numpy(y)


def _reference_loop(
    method: str,
    X: np.ndarray,
    y: np.ndarray,
    *,
    reg_l2: float,
    reg: float,
    fit_intercept: bool,
    sampler: Sampler,
    n_epochs: int,
    step_size: float,
    table_mean_per_draw: bool = False,
) -> np.ndarray:
    """Run proximal SAGA or SVRG for binary logistic regression in plain numpy, with the indices of ``sampler``.

    SAGA recomputes its table mean from the table before every step, unless
    ``table_mean_per_draw``, where the mean is updated once per draw, so that a sample drawn twice
    in a batch is counted twice (the error that the solver must avoid).
    """
    features = np.hstack([X, np.ones((X.shape[0], 1))]) if fit_intercept else X
    n, dim = features.shape
    penalised = np.ones(dim)
    if fit_intercept:
        penalised[-1] = 0.0

    def derivative(w: np.ndarray, i: int) -> float:
        # d/dz log(1 + exp(-y z)) = -y / (1 + exp(y z)).
        return -y[i] / (1.0 + math.exp(y[i] * (features[i] @ w)))

    def prox_step(w: np.ndarray, direction: np.ndarray) -> np.ndarray:
        value = w - step_size * (direction + reg_l2 * penalised * w)
        threshold = step_size * reg * penalised
        return np.sign(value) * np.maximum(np.abs(value) - threshold, 0.0)

    w = np.zeros(dim)
    table = np.array([derivative(w, i) for i in range(n)])
    iterations = n // sampler.batch_size
    for _ in range(n_epochs):
        index, weights = (tensor.numpy() for tensor in sampler.draw(iterations))
        snapshot = w.copy()
        snapshot_gradient = features.T @ np.array([derivative(snapshot, i) for i in range(n)]) / n
        table_mean = features.T @ table / n
        for t in range(iterations):
            batch = index[t]
            current = np.array([derivative(w, j) for j in batch])
            if method == "SAGA":
                if not table_mean_per_draw:
                    table_mean = features.T @ table / n
                subtracted, constant = table[batch], table_mean
            else:
                subtracted = np.array([derivative(snapshot, j) for j in batch])
                constant = snapshot_gradient
            direction = features[batch].T @ ((current - subtracted) * weights[t]) / len(batch) + constant
            w = prox_step(w, direction)
            if method == "SAGA":
                if table_mean_per_draw:
                    table_mean = table_mean + features[batch].T @ (current - table[batch]) / n
                table[batch] = current
    return w


STORAGE_CASES = {
    "l2": {"batch_size": 1, "sampling": "uniform", "reg": 0.0, "fit_intercept": False},
    "l2-batch4-importance": {"batch_size": 4, "sampling": "importance", "reg": 0.0, "fit_intercept": False},
    "l2-l1-intercept": {"batch_size": 1, "sampling": "uniform", "reg": 0.01, "fit_intercept": True},
}


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta state")
@pytest.mark.parametrize("method", ["SAGA", "SVRG"])
@pytest.mark.parametrize("case", sorted(STORAGE_CASES))
def test_storage_layouts_match_reference_loop(method, case):
    """Dense, COO and CSR storage of the same data give the iterate of a plain numpy loop after one epoch, to 1e-10.

    The problem has logistic loss, ℓ2 weight 1e-2 and all-zero features 3 and 8, and runs with
    seed 7 and the default step. The loop takes its indices from a :class:`Sampler` with the same seed.
    """
    options = STORAGE_CASES[case]
    X, y = _sparse_logistic_data()
    problem_options = {"reg_l2": 1e-2, "reg": options["reg"], "fit_intercept": options["fit_intercept"]}
    storages = {"dense": X, "coo": X.to_sparse_coo(), "csr": X.to_sparse_csr()}
    run_options = {"batch_size": options["batch_size"], "sampling": options["sampling"], "max_epochs": 1, "seed": 7}
    results = {}
    for layout, features in storages.items():
        problem = FiniteSum(features, y, "logistic", **problem_options)
        results[layout] = _run(method, problem, **run_options).W

    dense_problem = FiniteSum(X, y, "logistic", **problem_options)
    sampler = Sampler(dense_problem, options["batch_size"], options["sampling"], seed=7)
    step_size = DEFAULT_STEP_FACTORS[method] / batch_smoothness(dense_problem, sampler)
    expected = _reference_loop(
        method, X.numpy(), y.numpy(), **problem_options, sampler=sampler, n_epochs=1, step_size=step_size
    )

    assert float(np.linalg.norm(expected)) > 0.05
    assert _max_difference(results["dense"][:, 0], expected) < 1e-10
    assert _max_difference(results["coo"], results["dense"]) < 1e-10
    assert _max_difference(results["csr"], results["dense"]) < 1e-10
    for layout in storages:
        assert float(results[layout][[3, 8]].abs().max()) == 0.0


def test_saga_duplicate_draws_keep_table_mean():
    """Mini-batches that draw a sample twice leave SAGA's table mean equal to featuresᵀ·table/n.

    The reference loop recomputes the mean from the table before every step. Counting a repeated
    sample twice in the mean (the per-draw variant of the loop) moves the iterates by about 2.5e-2,
    so the comparison distinguishes the two.
    """
    X, y = _sparse_logistic_data(n=24, p=10, seed=5)
    problem = FiniteSum(X, y, "logistic", reg_l2=1e-2)
    batch_size, n_epochs = 6, 3
    index, _ = Sampler(problem, batch_size, "uniform", seed=11).draw(24 // batch_size)
    step_size = DEFAULT_STEP_FACTORS["SAGA"] / batch_smoothness(problem, Sampler(problem, batch_size, "uniform", seed=11))

    W = saga(problem, batch_size=batch_size, max_epochs=n_epochs, seed=11).W
    loop_options = {"reg_l2": 1e-2, "reg": 0.0, "fit_intercept": False, "n_epochs": n_epochs, "step_size": step_size}
    expected = _reference_loop("SAGA", X.numpy(), y.numpy(), sampler=Sampler(problem, batch_size, "uniform", seed=11), **loop_options)
    per_draw_sampler = Sampler(problem, batch_size, "uniform", seed=11)
    per_draw = _reference_loop("SAGA", X.numpy(), y.numpy(), sampler=per_draw_sampler, table_mean_per_draw=True, **loop_options)

    assert any(len(set(row.tolist())) < batch_size for row in index)
    assert _max_difference(W[:, 0], expected) < 1e-12
    assert _max_difference(W[:, 0], per_draw) > 1e-6


# Sample weights and step sizes.


@pytest.mark.parametrize("method", ["SVRG", "SAGA"])
@pytest.mark.parametrize("sampling", ["uniform", "importance"])
def test_integer_weights_give_repeated_sample_solution(method, sampling):
    """Integer weights (0 to 3) converge to the solution of the data with each sample repeated that many times, to 1e-8."""
    generator = np.random.default_rng(0)
    X = torch.from_numpy(generator.standard_normal((40, 5)))
    y = torch.from_numpy(np.where(generator.random(40) < 0.5, -1.0, 1.0))
    weights = torch.from_numpy(_integer_weights(40, seed=1))
    options = {"reg_l2": 0.05, "reg": 0.01, "fit_intercept": True}
    weighted = FiniteSum(X, y, "logistic", sample_weight=weights, **options)
    repeated = FiniteSum(X.repeat_interleave(weights.long(), dim=0), y.repeat_interleave(weights.long()), "logistic", **options)

    W_weighted = _run(method, weighted, sampling=sampling, max_epochs=200).W
    W_repeated = _run(method, repeated, sampling=sampling, max_epochs=200).W

    assert int((weights == 0).sum()) > 0
    assert _max_difference(W_weighted, W_repeated) <= 1e-8
    assert float(W_weighted.abs().max()) > 0.1


@pytest.mark.parametrize("sampling", ["uniform", "importance"])
@pytest.mark.parametrize("batch_size", [1, 5])
def test_batch_smoothness_uses_weighted_sample_norms(sampling, batch_size):
    """L_b = L_s/b + (1 − 1/b)L + reg_l2 with L_s from max_i ŝ_i‖x̃_i‖² (uniform) or its mean (importance), ŝ of mean 1."""
    X, y = _breast_cancer()
    weights = np.random.default_rng(2).integers(1, 6, len(y)).astype(np.float64)
    problem = _breast_cancer_problem(reg_l2=0.01, sample_weight=torch.from_numpy(weights))
    sampler = Sampler(problem, batch_size, sampling, seed=0)

    features = np.hstack([X, np.ones((len(y), 1))])
    scaled = weights * len(y) / weights.sum()
    sample_lipschitz = 0.25 * scaled * (features**2).sum(axis=1)
    # With p_i = L_i / Σ L_j every draw has L_i / (n p_i) = Σ L_j / n.
    draw_lipschitz = sample_lipschitz.max() if sampling == "uniform" else sample_lipschitz.mean()
    data_lipschitz = 0.25 * np.linalg.eigvalsh(features.T @ (scaled[:, None] * features))[-1] / len(y)
    expected = draw_lipschitz / batch_size + (1 - 1 / batch_size) * data_lipschitz + 0.01

    assert sampler.draw_lipschitz == pytest.approx(draw_lipschitz, rel=1e-12)
    assert batch_smoothness(problem, sampler) == pytest.approx(expected, rel=1e-8)


@pytest.mark.parametrize("method", METHODS)
def test_default_step_is_factor_over_smoothness(method):
    """``step_size=None`` runs the iterates of the documented default, factor / L_b (1 for SGD, 1/3 for SVRG and SAGA, 1/2 for SARAH)."""
    weights = torch.from_numpy(_integer_weights(40, seed=4) + 1.0)
    problem = _small_problem(reg_l2=0.05, sample_weight=weights, fit_intercept=True)
    step_size = DEFAULT_STEP_FACTORS[method] / batch_smoothness(problem, Sampler(problem, 4, "importance", seed=0))

    default = _run(method, problem, batch_size=4, sampling="importance", max_epochs=2).W
    explicit = _run(method, problem, batch_size=4, sampling="importance", max_epochs=2, step_size=step_size).W

    torch.testing.assert_close(default, explicit, rtol=0, atol=1e-15)


def test_importance_sampling_follows_lipschitz():
    """Importance sampling draws i with p_i = L_i / Σ L_j and weights each draw by 1/(n p_i)."""
    problem = _small_problem(sample_weight=torch.from_numpy(_integer_weights(40, seed=6)), fit_intercept=True)
    lipschitz = problem.sample_lipschitz().numpy()
    probabilities = lipschitz / lipschitz.sum()

    index, weights = Sampler(problem, 10, "importance", seed=3).draw(4000)
    frequencies = np.bincount(index.flatten().numpy(), minlength=40) / index.numel()

    np.testing.assert_allclose(weights.flatten().numpy(), 1.0 / (40 * probabilities[index.flatten().numpy()]), rtol=1e-14)
    assert index.shape == (4000, 10)
    assert frequencies[probabilities == 0].sum() == 0.0
    # 40,000 draws: the standard error of each frequency is below 0.0025.
    assert float(np.abs(frequencies - probabilities).max()) < 0.01


# Estimator variance and the trace.


def _variance_trace(method: str, variance_draws: int):
    """Return the trace of 30 epochs on breast cancer (C = 1, uniform sampling, default step)."""
    problem = _breast_cancer_problem(reg_l2=reg_l2_from_sklearn_C(1.0, _n_breast_cancer()))
    return _run(method, problem, max_epochs=30, trace=True, variance_draws=variance_draws).trace


@pytest.mark.parametrize("method", VARIANCE_REDUCED)
def test_variance_reduced_estimates_lose_variance(method):
    """The variance of the SVRG, L-SVRG, SAGA and SARAH estimates falls by more than four orders of magnitude in 30 epochs.

    Entry 1 (after the first epoch) is the reference, because entry 0 does not measure these
    estimators (see test_variance_trace_start_measures_estimator).
    """
    variance = _variance_trace(method, variance_draws=50).variance

    assert len(variance) == 31
    assert variance[1] > 1e-2
    assert variance[-1] <= 1e-4 * variance[1]


def test_sgd_variance_stays_with_constant_step():
    """SGD's variance with a constant step stays within an order of magnitude over the run: it does not vanish at the optimum.

    Single-sample SGD estimates are heavy-tailed on this data (a few samples have ‖x̃_i‖² near
    400, against 31 on average), so each entry averages 400 draws.
    """
    variance = np.array(_variance_trace("SGD", variance_draws=400).variance)

    assert len(variance) == 31
    assert variance[1:].max() <= 10 * variance[1:].min()
    assert 0.1 <= variance[-1] / variance[1] <= 10


@pytest.mark.parametrize("method", ["SVRG", "L-SVRG", "SAGA"])
def test_variance_trace_start_measures_estimator(method):
    """At W0 the snapshot (SVRG) or the table (SAGA) contains exact gradients, so the estimate is exact and entry 0 is 0."""
    problem = _small_problem(reg_l2=0.05)

    variance = _run(method, problem, max_epochs=1, trace=True, variance_draws=10).trace.variance

    assert variance[0] <= 1e-20


@pytest.mark.parametrize("method", METHODS)
def test_trace_has_one_entry_per_epoch(method):
    """The trace contains the start and one entry per epoch, with exact gradient counts, non-decreasing time and F − f_star."""
    problem = _small_problem(n=50, reg_l2=0.05)
    n_epochs, n = 6, 50

    trace = _run(method, problem, batch_size=5, max_epochs=n_epochs, trace=True, f_star=0.1, variance_draws=3).trace

    for column in (trace.epoch, trace.objective, trace.suboptimality, trace.grad_evals, trace.time_s, trace.variance):
        assert len(column) == n_epochs + 1
    assert trace.epoch == [float(e) for e in range(n_epochs + 1)]
    np.testing.assert_allclose(trace.suboptimality, np.array(trace.objective) - 0.1, rtol=0, atol=1e-15)
    assert trace.time_s[0] == 0.0
    assert all(later >= earlier for earlier, later in zip(trace.time_s, trace.time_s[1:]))
    assert all(later > earlier for earlier, later in zip(trace.grad_evals, trace.grad_evals[1:]))
    epochs = np.arange(n_epochs + 1)
    # Each epoch makes n draws of one gradient (SGD, SAGA) or two (SVRG, SARAH: the iterate and the reference point).
    # SVRG's snapshot and SARAH's restart add a full pass per epoch, the first one at the start (entry 0),
    # and SAGA fills its table once at the start.
    if method == "SGD":
        np.testing.assert_array_equal(trace.grad_evals, n * epochs)
    elif method == "SAGA":
        np.testing.assert_array_equal(trace.grad_evals, n + n * epochs)
    elif method in ("SVRG", "SARAH"):
        np.testing.assert_array_equal(trace.grad_evals, np.maximum(3 * n * epochs, n))
    else:
        # L-SVRG: the first snapshot, two gradients per draw, and one full pass per random snapshot.
        extra = np.array(trace.grad_evals[1:]) - n - 2 * n * epochs[1:]
        assert all(value >= 0 and value % n == 0 for value in extra)


def test_same_seed_gives_same_iterates():
    """The index stream is set by ``seed``: the same seed repeats the run exactly, another one changes it."""
    problem = _small_problem(reg_l2=0.05)

    first = sgd(problem, max_epochs=3, seed=5).W
    again = sgd(problem, max_epochs=3, seed=5).W
    other = sgd(problem, max_epochs=3, seed=6).W

    assert torch.equal(first, again)
    assert _max_difference(first, other) > 1e-6


# Unbiasedness of the estimates.


def _unbiasedness_setup(loss: str, sampling: str):
    """Return a weighted problem with intercept, a random W, the draw probabilities and the weights 1/(n p_j) of single-sample draws."""
    weights = torch.from_numpy(_integer_weights(30, seed=8) + 1.0)
    problem = _small_problem(loss, n=30, p=4, sample_weight=weights, fit_intercept=True)
    generator = torch.Generator().manual_seed(9)
    W = torch.randn(problem.dim, problem.n_outputs, generator=generator, dtype=torch.float64)
    if sampling == "uniform":
        probabilities = torch.full((30,), 1.0 / 30, dtype=torch.float64)
    else:
        lipschitz = problem.sample_lipschitz()
        probabilities = lipschitz / lipschitz.sum()
    return problem, W, probabilities, 1.0 / (30 * probabilities), generator


@pytest.mark.parametrize("loss", ["logistic", "multinomial"])
@pytest.mark.parametrize("sampling", ["uniform", "importance"])
@pytest.mark.parametrize("method", ["SGD", "SVRG", "SAGA"])
def test_estimate_averages_to_full_gradient(method, sampling, loss):
    """Σ_j p_j · estimate(j) over all n single-sample draws equals the full data gradient, to 1e-12.

    With uniform sampling every weight is 1 and the sum is the plain mean. SVRG uses a random
    snapshot and SAGA a random table, since unbiasedness must hold for any state.
    """
    problem, W, probabilities, draw_weights, generator = _unbiasedness_setup(loss, sampling)
    snapshot = torch.randn(W.shape, generator=generator, dtype=torch.float64)
    snapshot_gradient = problem.data_gradient(snapshot)
    table = torch.randn(problem.n_samples, problem.n_outputs, generator=generator, dtype=torch.float64)
    # SAGA's mean of the table, 1/n Σ_i x̃_i α_iᵀ.
    table_mean = problem.features.T @ table / problem.n_samples

    average = torch.zeros_like(W)
    for j in range(problem.n_samples):
        index = torch.tensor([j])
        weight = draw_weights[j : j + 1]
        if method == "SGD":
            estimate = sgd_direction(problem, W, index, weight)
        elif method == "SVRG":
            estimate = svrg_direction(problem, W, snapshot, snapshot_gradient, index, weight)
        else:
            estimate = saga_direction(problem, W, table, table_mean, index, weight)[0]
        average += probabilities[j] * estimate

    torch.testing.assert_close(average, problem.data_gradient(W), rtol=0, atol=1e-12)


@pytest.mark.parametrize("sampling", ["uniform", "importance"])
def test_sarah_estimate_mean_is_recursive(sampling):
    """SARAH's estimate averages to v_prev + ∇(W) − ∇(W_prev): biased, but its mean moves with the gradient difference."""
    problem, W, probabilities, draw_weights, generator = _unbiasedness_setup("logistic", sampling)
    W_previous = W + 0.1 * torch.randn(W.shape, generator=generator, dtype=torch.float64)
    previous = torch.randn(W.shape, generator=generator, dtype=torch.float64)

    average = torch.zeros_like(W)
    for j in range(problem.n_samples):
        estimate = sarah_direction(problem, W, W_previous, previous, torch.tensor([j]), draw_weights[j : j + 1])
        average += probabilities[j] * estimate

    expected = previous + problem.data_gradient(W) - problem.data_gradient(W_previous)
    torch.testing.assert_close(average, expected, rtol=0, atol=1e-12)


def test_proximal_step_soft_thresholds_penalised_rows():
    """``proximal_step`` takes the ℓ2-corrected gradient step, then soft-thresholds every row except the intercept."""
    problem = _small_problem(reg_l2=0.5, reg=0.2, fit_intercept=True)
    W = torch.tensor([[1.0], [-0.3], [0.05], [0.0], [2.0], [0.01]], dtype=torch.float64)
    direction = torch.tensor([[0.5], [-1.0], [0.0], [0.1], [-3.0], [0.02]], dtype=torch.float64)
    step_size = 0.4

    result = proximal_step(problem, W, direction, step_size)

    moved = W - step_size * (direction + 0.5 * W * torch.tensor([[1.0]] * 5 + [[0.0]], dtype=torch.float64))
    threshold = step_size * 0.2
    expected = torch.sign(moved) * torch.clamp(moved.abs() - threshold, min=0.0)
    expected[-1] = moved[-1]
    torch.testing.assert_close(result, expected, rtol=0, atol=1e-15)
    assert float(result[2, 0]) == 0.0


# Bad input.


@pytest.mark.parametrize("method", METHODS)
def test_step_size_above_stable_range_rejected(method):
    problem = _small_problem(reg_l2=0.05)
    smoothness = batch_smoothness(problem, Sampler(problem, 2, "uniform", seed=0))
    step_size = 2.5 / smoothness
    message = f"{method}: step_size={step_size:.6g} is above the stable range 2/L_b = {2.0 / smoothness:.6g}"

    with pytest.raises(ValueError, match=re.escape(message)):
        _run(method, problem, batch_size=2, step_size=step_size, max_epochs=1)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("step_size", [0.0, -0.1, math.nan, math.inf])
def test_step_size_not_positive_finite_rejected(method, step_size):
    problem = _small_problem()
    with pytest.raises(ValueError, match=f"step_size must be a positive finite number, got {step_size}"):
        _run(method, problem, step_size=step_size, max_epochs=1)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("batch_size", [0, 41])
def test_batch_size_outside_dataset_rejected(method, batch_size):
    problem = _small_problem()
    with pytest.raises(ValueError, match=rf"batch_size must lie in \[1, n_samples = 40\], got {batch_size}"):
        _run(method, problem, batch_size=batch_size, max_epochs=1)


@pytest.mark.parametrize("method", METHODS)
def test_unknown_sampling_rejected(method):
    problem = _small_problem()
    with pytest.raises(ValueError, match="sampling must be one of .*, got 'weighted'"):
        _run(method, problem, sampling="weighted", max_epochs=1)


def test_unknown_schedule_rejected():
    problem = _small_problem()
    with pytest.raises(ValueError, match="schedule must be one of .*, got 'cosine'"):
        sgd(problem, schedule="cosine", max_epochs=1)


@pytest.mark.parametrize("method", METHODS)
def test_start_of_wrong_shape_rejected(method):
    problem = _small_problem(fit_intercept=True)
    with pytest.raises(ValueError, match=r"W must have shape \(6, 1\) for this problem, got \(5, 1\)"):
        _run(method, problem, W0=torch.zeros(5, 1, dtype=torch.float64), max_epochs=1)


@pytest.mark.parametrize("method", METHODS)
def test_negative_epochs_or_variance_draws_rejected(method):
    problem = _small_problem()
    with pytest.raises(ValueError, match="max_epochs must be >= 0, got -1"):
        _run(method, problem, max_epochs=-1)
    with pytest.raises(ValueError, match="variance_draws must be >= 0, got -2"):
        _run(method, problem, max_epochs=1, variance_draws=-2)


@pytest.mark.parametrize("probability", [0.0, 1.5])
def test_snapshot_probability_outside_unit_interval_rejected(probability):
    problem = _small_problem()
    with pytest.raises(ValueError, match=rf"snapshot_probability must lie in \(0, 1\], got {probability}"):
        svrg(problem, loopless=True, snapshot_probability=probability, max_epochs=1)


def test_snapshot_probability_without_loopless_rejected():
    problem = _small_problem()
    with pytest.raises(ValueError, match="snapshot_probability applies to loopless SVRG only"):
        svrg(problem, snapshot_probability=0.5, max_epochs=1)


# Divergence.


@pytest.mark.parametrize("method", METHODS)
def test_overflowing_start_raises(method):
    """A start of 1e308 overflows the margins in the first epoch, and the run raises FloatingPointError instead of returning NaN."""
    problem = _diabetes_lasso(1.0)
    W0 = torch.full((problem.dim, 1), 1e308, dtype=torch.float64)

    with pytest.raises(FloatingPointError, match=f"{method} diverged in epoch 1"):
        _run(method, problem, W0=W0, max_epochs=3)


def test_saga_divergence_at_accepted_step_raises():
    """Importance-sampled SAGA on the diabetes Lasso diverges at step 2/L_b, which the step guard accepts, and raises FloatingPointError."""
    problem = _diabetes_lasso(1.0)
    step_size = 2.0 / batch_smoothness(problem, Sampler(problem, 1, "importance", seed=0))

    with pytest.raises(FloatingPointError, match=r"SAGA diverged in epoch \d+"):
        saga(problem, sampling="importance", step_size=step_size, max_epochs=300)


def test_overflowing_objective_raises():
    """Importance-sampled SAGA at step 1.5/L_b diverges, so once the objective overflows the run raises FloatingPointError."""
    problem = _diabetes_lasso(1.0)
    step_size = 1.5 / batch_smoothness(problem, Sampler(problem, 1, "importance", seed=0))

    with pytest.raises(FloatingPointError):
        saga(problem, sampling="importance", step_size=step_size, max_epochs=300, trace=True)


def test_rising_objective_logs_a_warning(caplog):
    """A step that makes the objective grow (importance-sampled SAGA, b = 8, step just below 2/L_b) is reported once."""
    problem = _diabetes_lasso(1.0)
    step_size = 0.999 * 2.0 / batch_smoothness(problem, Sampler(problem, 8, "importance", seed=0))

    with caplog.at_level("WARNING", logger="unrolled.solvers.stochastic"):
        result = saga(problem, sampling="importance", batch_size=8, step_size=step_size, max_epochs=20, trace=True)

    assert result.trace.objective[-1] > result.trace.objective[0]
    warnings = [record for record in caplog.records if "is above its starting value" in record.getMessage()]
    assert len(warnings) == 1
    assert "step_size" in warnings[0].getMessage()


def test_tolerance_without_optimum_is_refused():
    with pytest.raises(ValueError, match="tol=1e-06 needs f_star"):
        saga(_small_problem(), tol=1e-6, max_epochs=1)


def test_fractional_batch_size_is_refused():
    with pytest.raises(ValueError, match="batch_size must be an integer, got 2.5"):
        saga(_small_problem(), batch_size=2.5, max_epochs=1)
