"""FiniteSum and the GLM losses: gradients, Lipschitz constants, sample weights, storage and input checks.

Every expected value is computed here from the definitions (torch.autograd, finite differences,
numpy eigvalsh, repeated samples), never taken from the code under test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits
from sklearn.preprocessing import StandardScaler

from unrolled.problems.finite_sum import FiniteSum, reg_from_sklearn_alpha, reg_l2_from_sklearn_C
from unrolled.problems.glm_losses import LogisticLoss, MultinomialLoss, SquaredLoss, make_loss

pytestmark = pytest.mark.usefixtures("single_torch_thread")

LOSSES = ("squared", "logistic", "multinomial")
N_CLASSES = 4


def _synthetic(loss: str, n: int = 40, p: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Return seeded features (n, p) and targets that suit ``loss``. Multinomial labels cover 0..N_CLASSES-1."""
    generator = np.random.default_rng(seed)
    X = generator.standard_normal((n, p))
    if loss == "squared":
        y = X @ generator.standard_normal(p) + 0.5 * generator.standard_normal(n)
    elif loss == "logistic":
        y = np.where(generator.random(n) < 0.5, -1.0, 1.0)
    else:
        y = np.arange(n) % N_CLASSES
        generator.shuffle(y)
    return torch.from_numpy(X), torch.from_numpy(y.astype(np.float64))


def _integer_weights(n: int, seed: int = 1) -> torch.Tensor:
    """Return seeded integer sample weights in {0, 1, 2, 3} with at least one zero."""
    weights = np.random.default_rng(seed).integers(0, 4, n).astype(np.float64)
    weights[0] = 0.0
    return torch.from_numpy(weights)


def _n_outputs(loss: str) -> int:
    return N_CLASSES if loss == "multinomial" else 1


def _random_W(dim: int, k: int, seed: int = 2, scale: float = 0.5) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return scale * torch.randn(dim, k, generator=generator, dtype=torch.float64)


def _with_ones(X: torch.Tensor, fit_intercept: bool) -> torch.Tensor:
    if not fit_intercept:
        return X
    return torch.cat([X, torch.ones(X.shape[0], 1, dtype=X.dtype)], dim=1)


def _per_sample_losses(loss: str, margins: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Return the losses of the definitions, written with torch.nn.functional rather than the library's formulas."""
    if loss == "squared":
        return 0.5 * (margins[:, 0] - y) ** 2
    if loss == "logistic":
        # log(1 + exp(-yz)) is the binary cross-entropy of the label (1 + y)/2 at logit z.
        return torch.nn.functional.binary_cross_entropy_with_logits(margins[:, 0], (1.0 + y) / 2.0, reduction="none")
    return torch.nn.functional.cross_entropy(margins, y.long(), reduction="none")


def _reference_objective(
    X: torch.Tensor,
    y: torch.Tensor,
    loss: str,
    W: torch.Tensor,
    *,
    reg_l2: float = 0.0,
    reg: float = 0.0,
    sample_weight: torch.Tensor | None = None,
    fit_intercept: bool = False,
) -> torch.Tensor:
    """Return F(W) from the definition: weights rescaled to mean 1, the intercept row unpenalised."""
    n = X.shape[0]
    losses = _per_sample_losses(loss, _with_ones(X, fit_intercept) @ W, y)
    weights = torch.ones(n, dtype=torch.float64) if sample_weight is None else sample_weight * n / sample_weight.sum()
    penalised = W[:-1] if fit_intercept else W
    return (weights * losses).mean() + 0.5 * reg_l2 * (penalised**2).sum() + reg * penalised.abs().sum()


def _standardised(loader) -> tuple[np.ndarray, np.ndarray]:
    X, y = loader(return_X_y=True)
    return StandardScaler().fit_transform(X), y.astype(np.float64)


def _real_problem_data(name: str) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Return standardised features, targets and loss of breast cancer (labels ±1), diabetes or digits."""
    if name == "breast_cancer":
        X, y = _standardised(load_breast_cancer)
        return torch.from_numpy(X), torch.from_numpy(2.0 * y - 1.0), "logistic"
    if name == "diabetes":
        X, y = _standardised(load_diabetes)
        return torch.from_numpy(X), torch.from_numpy(y), "squared"
    X, y = _standardised(load_digits)
    return torch.from_numpy(X), torch.from_numpy(y), "multinomial"


# Values and gradients.


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("fit_intercept", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
def test_objective_matches_definition(loss, fit_intercept, weighted):
    """F(W) equals the weighted mean of the losses plus both penalties, the intercept left unpenalised."""
    X, y = _synthetic(loss)
    weights = _integer_weights(len(y)) if weighted else None
    problem = FiniteSum(X, y, loss, reg_l2=0.3, reg=0.2, sample_weight=weights, fit_intercept=fit_intercept)
    W = _random_W(problem.dim, _n_outputs(loss))

    expected = _reference_objective(X, y, loss, W, reg_l2=0.3, reg=0.2, sample_weight=weights, fit_intercept=fit_intercept)

    assert problem.objective(W) == pytest.approx(float(expected), rel=1e-14)


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("fit_intercept", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
def test_gradient_matches_autograd(loss, fit_intercept, weighted):
    """``gradient`` is the autograd gradient of the smooth part (data term and ℓ2 term) of the objective."""
    X, y = _synthetic(loss)
    weights = _integer_weights(len(y)) if weighted else None
    problem = FiniteSum(X, y, loss, reg_l2=0.3, reg=0.2, sample_weight=weights, fit_intercept=fit_intercept)
    W = _random_W(problem.dim, _n_outputs(loss)).requires_grad_(True)

    smooth = _reference_objective(X, y, loss, W, reg_l2=0.3, sample_weight=weights, fit_intercept=fit_intercept)
    (expected,) = torch.autograd.grad(smooth, W)

    torch.testing.assert_close(problem.gradient(W.detach()), expected, rtol=0, atol=1e-14)


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("fit_intercept", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
def test_gradient_matches_finite_differences(loss, fit_intercept, weighted):
    """Central differences of ``objective`` (with reg = 0, so F is smooth) agree with ``gradient``."""
    X, y = _synthetic(loss, n=25, p=4)
    weights = _integer_weights(len(y)) if weighted else None
    problem = FiniteSum(X, y, loss, reg_l2=0.3, sample_weight=weights, fit_intercept=fit_intercept)
    W = _random_W(problem.dim, _n_outputs(loss))
    h = 1e-5

    differences = torch.zeros_like(W)
    for row in range(W.shape[0]):
        for column in range(W.shape[1]):
            step = torch.zeros_like(W)
            step[row, column] = h
            differences[row, column] = (problem.objective(W + step) - problem.objective(W - step)) / (2 * h)

    # The truncation error is O(h^2) and the rounding error about 1e-16 / h, both below 1e-8 here.
    torch.testing.assert_close(problem.gradient(W), differences, rtol=0, atol=1e-8)


def _margins(loss: str, n: int, seed: int, scale: float) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return scale * torch.randn(n, _n_outputs(loss), generator=generator, dtype=torch.float64)


@pytest.mark.parametrize("loss", LOSSES)
def test_loss_derivative_matches_autograd(loss):
    """Each loss's ``derivative`` is the autograd derivative of its ``value``, for margins up to about 15 in size."""
    instance = make_loss(loss, N_CLASSES)
    _, y = _synthetic(loss, n=30)
    margins = _margins(loss, 30, seed=3, scale=5.0).requires_grad_(True)

    (expected,) = torch.autograd.grad(instance.value(margins, y).sum(), margins)

    assert isinstance(instance, {"squared": SquaredLoss, "logistic": LogisticLoss, "multinomial": MultinomialLoss}[loss])
    torch.testing.assert_close(instance.derivative(margins.detach(), y), expected, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("loss", ["squared", "logistic"])
def test_loss_second_derivative_matches_autograd(loss):
    """``second_derivative`` of the one-margin losses is the autograd second derivative of ``value``."""
    instance = make_loss(loss)
    _, y = _synthetic(loss, n=30)
    margins = _margins(loss, 30, seed=4, scale=5.0).requires_grad_(True)

    (first,) = torch.autograd.grad(instance.value(margins, y).sum(), margins, create_graph=True)
    (second,) = torch.autograd.grad(first.sum(), margins)

    torch.testing.assert_close(instance.second_derivative(margins.detach(), y), second[:, 0], rtol=1e-12, atol=1e-16)


@pytest.mark.parametrize("loss", LOSSES)
def test_loss_value_matches_torch_functional(loss):
    """Each loss's ``value`` equals the torch.nn.functional form of the same loss for margins up to about 15 in size."""
    instance = make_loss(loss, N_CLASSES)
    _, y = _synthetic(loss, n=30)
    margins = _margins(loss, 30, seed=5, scale=5.0)

    torch.testing.assert_close(instance.value(margins, y), _per_sample_losses(loss, margins, y), rtol=1e-13, atol=1e-15)


def test_logistic_value_accurate_for_large_losses():
    """log(1 + e^{-yz}) keeps its e^{yz} term for badly misclassified samples (-yz = 21, 27, 35)."""
    losses = torch.tensor([21.0, 27.0, 35.0], dtype=torch.float64)
    labels = torch.ones(3, dtype=torch.float64)
    expected = losses + torch.log1p(torch.exp(-losses))

    torch.testing.assert_close(LogisticLoss().value(-losses[:, None], labels), expected, rtol=1e-15, atol=0)


# Curvature and Lipschitz constants.


def test_logistic_curvature_is_one_quarter():
    """The second derivative of the logistic loss (autograd) peaks at z = 0 with value 1/4, the stated curvature."""
    z = torch.linspace(-30.0, 30.0, 6001, dtype=torch.float64, requires_grad=True)
    labels = torch.ones_like(z)
    (first,) = torch.autograd.grad(LogisticLoss().value(z[:, None], labels).sum(), z, create_graph=True)
    (second,) = torch.autograd.grad(first.sum(), z)

    assert float(second.max()) <= LogisticLoss.curvature * (1 + 1e-15)
    assert float(second[3000]) == pytest.approx(0.25, rel=1e-15)


@pytest.mark.parametrize("n_classes", [2, 3, 10])
def test_multinomial_curvature_bound_holds(n_classes):
    """The eigenvalues of diag(p) − ppᵀ stay at most 1/2 over random z, and the bound is reached for two equal classes."""
    generator = torch.Generator().manual_seed(n_classes)
    largest = 0.0
    for scale in (0.1, 1.0, 3.0, 10.0):
        z = scale * torch.randn(500, n_classes, generator=generator, dtype=torch.float64)
        p = torch.softmax(z, dim=1)
        hessians = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
        largest = max(largest, float(np.linalg.eigvalsh(hessians.numpy()).max()))

    assert largest <= MultinomialLoss.curvature + 1e-15
    # Two classes with one positive and one negative margin of equal size: p = (1/2, 1/2, ~0, ...).
    z = torch.full((1, n_classes), -60.0, dtype=torch.float64)
    z[0, :2] = 0.0
    p = torch.softmax(z, dim=1)[0]
    top = float(np.linalg.eigvalsh((torch.diag(p) - torch.outer(p, p)).numpy()).max())
    assert top == pytest.approx(0.5, rel=1e-12)


def test_multinomial_hessian_is_softmax_covariance():
    """The autograd Hessian of the multinomial loss in z is diag(p) − ppᵀ, the matrix the curvature bound covers."""
    z = torch.tensor([0.3, -1.2, 2.0, 0.1], dtype=torch.float64)
    label = torch.tensor([2.0], dtype=torch.float64)
    loss = MultinomialLoss(4)

    hessian = torch.autograd.functional.hessian(lambda margins: loss.value(margins[None, :], label).sum(), z)
    p = torch.softmax(z, dim=0)

    torch.testing.assert_close(hessian, torch.diag(p) - torch.outer(p, p), rtol=0, atol=1e-15)


def _sample_gradient(X, y, loss, weights, fit_intercept, i, W) -> torch.Tensor:
    """Return the autograd gradient of sample i's weighted loss ŝ_i ψ(x̃_iᵀW, y_i) (weights rescaled to mean 1)."""
    W = W.clone().requires_grad_(True)
    n = X.shape[0]
    scaled = torch.ones(n, dtype=torch.float64) if weights is None else weights * n / weights.sum()
    row = _with_ones(X, fit_intercept)[i : i + 1]
    value = scaled[i] * _per_sample_losses(loss, row @ W, y[i : i + 1]).sum()
    (gradient,) = torch.autograd.grad(value, W)
    return gradient


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("weighted", [False, True])
def test_sample_lipschitz_bounds_gradient_differences(loss, weighted):
    """‖∇f_i(W₁) − ∇f_i(W₂)‖ ≤ L_i‖W₁ − W₂‖ on random pairs, for every sample of a problem with intercept."""
    X, y = _synthetic(loss, n=20, p=5)
    weights = _integer_weights(len(y)) if weighted else None
    problem = FiniteSum(X, y, loss, sample_weight=weights, fit_intercept=True)
    lipschitz = problem.sample_lipschitz()
    k = _n_outputs(loss)

    worst_ratio = 0.0
    for pair in range(10):
        W1 = _random_W(problem.dim, k, seed=10 + pair, scale=2.0)
        W2 = W1 + _random_W(problem.dim, k, seed=100 + pair, scale=0.1 * (pair + 1))
        for i in range(len(y)):
            difference = _sample_gradient(X, y, loss, weights, True, i, W1) - _sample_gradient(X, y, loss, weights, True, i, W2)
            if float(lipschitz[i]) == 0.0:
                # A sample of weight 0 has L_i = 0 and a constant (zero) gradient.
                assert float(difference.abs().max()) == 0.0
                continue
            ratio = float(torch.linalg.norm(difference) / (lipschitz[i] * torch.linalg.norm(W1 - W2)))
            worst_ratio = max(worst_ratio, ratio)

    assert worst_ratio <= 1.0 + 1e-12
    # Some pair comes within a factor of 100 of the bound, so the check is not vacuous.
    assert worst_ratio > 0.01


@pytest.mark.parametrize("loss", ["squared", "logistic"])
def test_sample_lipschitz_is_attained(loss):
    """For the squared and logistic losses L_i is tight: a small move along x̃_i from margin 0 changes ∇f_i by L_i times its size."""
    X, y = _synthetic(loss, n=12, p=5)
    problem = FiniteSum(X, y, loss, fit_intercept=True)
    features = _with_ones(X, True)
    t = 1e-6

    for i in range(len(y)):
        direction = (features[i] / torch.linalg.norm(features[i]))[:, None]
        # W0 puts sample i at margin 0 (the logistic loss's curvature peaks there) and W1 moves along x̃_i.
        W0 = torch.zeros(problem.dim, 1, dtype=torch.float64)
        W1 = t * direction
        difference = _sample_gradient(X, y, loss, None, True, i, W1) - _sample_gradient(X, y, loss, None, True, i, W0)
        ratio = float(torch.linalg.norm(difference)) / t

        assert ratio == pytest.approx(float(problem.sample_lipschitz()[i]), rel=1e-6)


@pytest.mark.parametrize("dataset", ["breast_cancer", "diabetes", "digits"])
@pytest.mark.parametrize("fit_intercept", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
def test_lipschitz_matches_eigvalsh(dataset, fit_intercept, weighted):
    """``lipschitz()`` equals curvature · λmax(X̃ᵀŜX̃)/n + reg_l2, with λmax from numpy's eigvalsh."""
    X, y, loss = _real_problem_data(dataset)
    n = X.shape[0]
    weights = torch.from_numpy(np.random.default_rng(5).integers(1, 4, n).astype(np.float64)) if weighted else None
    problem = FiniteSum(X, y, loss, reg_l2=0.01, sample_weight=weights, fit_intercept=fit_intercept)

    features = _with_ones(X, fit_intercept).numpy()
    scaled = np.ones(n) if weights is None else weights.numpy() * n / weights.numpy().sum()
    largest = np.linalg.eigvalsh(features.T @ (scaled[:, None] * features))[-1] / n
    expected = {"squared": 1.0, "logistic": 0.25, "multinomial": 0.5}[loss] * largest + 0.01

    # Power iteration stops at a relative change of 1e-9. The measured errors stay below 2e-9.
    assert problem.lipschitz() == pytest.approx(expected, rel=1e-7)


@pytest.mark.parametrize("loss", LOSSES)
def test_sample_lipschitz_uses_scaled_weights(loss):
    """L_i = curvature · (n s_i / Σ s) · ‖x̃_i‖², the weights rescaled to mean 1 before they scale the bound."""
    X, y = _synthetic(loss)
    weights = _integer_weights(len(y))
    problem = FiniteSum(X, y, loss, sample_weight=weights, fit_intercept=True)

    curvature = {"squared": 1.0, "logistic": 0.25, "multinomial": 0.5}[loss]
    squared_norms = (X**2).sum(dim=1) + 1.0
    expected = curvature * weights * len(y) / weights.sum() * squared_norms

    torch.testing.assert_close(problem.sample_lipschitz(), expected, rtol=1e-14, atol=0)


# Sample weights.


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("fit_intercept", [False, True])
def test_integer_weights_equal_repeated_samples(loss, fit_intercept):
    """A weight k is the same problem as the sample repeated k times (0: dropped): same F, gradient and L at random W."""
    X, y = _synthetic(loss)
    weights = _integer_weights(len(y))
    repeats = weights.long()
    # Dropping the samples of weight 0 may remove the largest label, so the class count is given.
    n_classes = N_CLASSES if loss == "multinomial" else None
    options = {"reg_l2": 0.1, "reg": 0.05, "fit_intercept": fit_intercept, "n_classes": n_classes}
    weighted = FiniteSum(X, y, loss, sample_weight=weights, **options)
    repeated = FiniteSum(X.repeat_interleave(repeats, dim=0), y.repeat_interleave(repeats), loss, **options)

    assert repeated.n_samples == int(weights.sum())
    for seed in range(3):
        W = _random_W(weighted.dim, _n_outputs(loss), seed=seed)
        assert weighted.objective(W) == pytest.approx(repeated.objective(W), rel=1e-13)
        torch.testing.assert_close(weighted.gradient(W), repeated.gradient(W), rtol=1e-12, atol=1e-14)
    assert weighted.lipschitz() == pytest.approx(repeated.lipschitz(), rel=1e-7)


def test_uniform_weights_equal_no_weights():
    """Weights that are all equal (here 7) give the unweighted problem: they are rescaled to mean 1."""
    X, y = _synthetic("logistic")
    plain = FiniteSum(X, y, "logistic", reg_l2=0.1)
    scaled = FiniteSum(X, y, "logistic", reg_l2=0.1, sample_weight=torch.full((len(y),), 7.0, dtype=torch.float64))
    W = _random_W(plain.dim, 1)

    assert scaled.objective(W) == pytest.approx(plain.objective(W), rel=1e-15)
    torch.testing.assert_close(scaled.gradient(W), plain.gradient(W), rtol=1e-15, atol=0)


# Storage.


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta state")
@pytest.mark.parametrize("layout", ["coo", "csr"])
@pytest.mark.parametrize("fit_intercept", [False, True])
def test_sparse_storage_matches_dense(layout, fit_intercept):
    """COO and CSR storage of the same data (some all-zero features) give the dense values of every quantity."""
    X, y = _synthetic("logistic", n=30, p=8)
    X = X * (torch.rand(X.shape, generator=torch.Generator().manual_seed(6), dtype=torch.float64) < 0.3)
    X[:, [1, 5]] = 0.0
    sparse = X.to_sparse_coo() if layout == "coo" else X.to_sparse_csr()
    weights = _integer_weights(len(y))
    dense_problem = FiniteSum(X, y, "logistic", reg_l2=0.01, reg=0.02, sample_weight=weights, fit_intercept=fit_intercept)
    sparse_problem = FiniteSum(sparse, y, "logistic", reg_l2=0.01, reg=0.02, sample_weight=weights, fit_intercept=fit_intercept)
    W = _random_W(dense_problem.dim, 1)
    index = torch.tensor([3, 0, 3, 17])

    assert sparse_problem.sparse
    assert not dense_problem.sparse
    assert sparse_problem.objective(W) == pytest.approx(dense_problem.objective(W), rel=1e-15)
    torch.testing.assert_close(sparse_problem.gradient(W), dense_problem.gradient(W), rtol=0, atol=1e-15)
    torch.testing.assert_close(sparse_problem.sample_lipschitz(), dense_problem.sample_lipschitz(), rtol=1e-15, atol=0)
    torch.testing.assert_close(sparse_problem.rows(index), dense_problem.rows(index), rtol=0, atol=0)
    assert sparse_problem.lipschitz() == pytest.approx(dense_problem.lipschitz(), rel=1e-12)


# Conversions from scikit-learn's conventions.


def test_reg_l2_from_sklearn_C_matches_logistic_objective():
    """Our objective with reg_l2 = 1/(C Σs) is scikit-learn's C Σ s_i ψ_i + ½‖w‖² divided by C Σs (intercept unpenalised)."""
    X, y = _synthetic("logistic")
    weights = _integer_weights(len(y)) + 1.0
    C = 0.7
    reg_l2 = reg_l2_from_sklearn_C(C, float(weights.sum()))
    problem = FiniteSum(X, y, "logistic", reg_l2=reg_l2, sample_weight=weights, fit_intercept=True)
    W = _random_W(problem.dim, 1)

    margins = (X @ W[:-1, 0] + W[-1, 0]).numpy()
    sklearn_objective = C * np.sum(weights.numpy() * np.logaddexp(0.0, -y.numpy() * margins)) + 0.5 * np.sum(W[:-1].numpy() ** 2)

    assert problem.objective(W) == pytest.approx(sklearn_objective / (C * float(weights.sum())), rel=1e-14)


def test_reg_from_sklearn_alpha_matches_lasso_objective():
    """Our objective with reg = alpha is scikit-learn's Lasso objective ‖y − Xw − b‖²/(2n) + alpha‖w‖₁."""
    X, y = _synthetic("squared")
    alpha = 0.3
    problem = FiniteSum(X, y, "squared", reg=reg_from_sklearn_alpha(alpha), fit_intercept=True)
    W = _random_W(problem.dim, 1)

    residual = (y - X @ W[:-1, 0] - W[-1, 0]).numpy()
    sklearn_objective = np.sum(residual**2) / (2 * len(y)) + alpha * np.abs(W[:-1].numpy()).sum()

    assert problem.objective(W) == pytest.approx(sklearn_objective, rel=1e-14)


def test_objective_overflow_gives_inf_not_nan():
    """An objective larger than the largest float64 evaluates to inf, which callers can compare, rather than NaN."""
    X, y = _synthetic("squared")
    problem = FiniteSum(X, y, "squared", reg=0.1)
    W = torch.full((problem.dim, 1), 1e160, dtype=torch.float64)

    assert problem.objective(W) == math.inf


# Bad input.


def test_logistic_zero_one_labels_rejected():
    X, y = _synthetic("logistic")
    with pytest.raises(ValueError, match=r"got the values \[0\.0, 1\.0\]"):
        FiniteSum(X, (y + 1) / 2, "logistic")


def test_multinomial_label_too_large_rejected():
    X, y = _synthetic("multinomial")
    y[7] = 4.0
    with pytest.raises(ValueError, match=r"labels in 0\.\.3, got the values \[4\.0\]"):
        FiniteSum(X, y, "multinomial", n_classes=4)


def test_multinomial_fractional_label_rejected():
    X, y = _synthetic("multinomial")
    y[2] = 1.5
    with pytest.raises(ValueError, match=r"got the values \[1\.5\]"):
        FiniteSum(X, y, "multinomial", n_classes=4)


def test_multinomial_single_class_rejected():
    with pytest.raises(ValueError, match="n_classes >= 2, got 1"):
        MultinomialLoss(1)


def test_unknown_loss_rejected():
    X, y = _synthetic("logistic")
    with pytest.raises(ValueError, match="unknown loss 'hinge'"):
        FiniteSum(X, y, "hinge")


def test_nan_feature_rejected_with_position():
    X, y = _synthetic("logistic")
    X[3, 2] = math.nan
    with pytest.raises(ValueError, match=r"NaN or infinite entries \(first at sample 3, feature 2\)"):
        FiniteSum(X, y, "logistic")


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta state")
@pytest.mark.parametrize("layout", ["coo", "csr"])
def test_nan_feature_rejected_in_sparse_storage(layout):
    X, y = _synthetic("logistic")
    X[5, 1] = math.inf
    sparse = X.to_sparse_coo() if layout == "coo" else X.to_sparse_csr()
    with pytest.raises(ValueError, match=r"NaN or infinite entries \(in the stored values\)"):
        FiniteSum(sparse, y, "logistic")


def test_nan_squared_target_rejected():
    X, y = _synthetic("squared")
    y[4] = math.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        FiniteSum(X, y, "squared")


@pytest.mark.parametrize("name", ["reg", "reg_l2"])
@pytest.mark.parametrize("value", [-0.1, math.nan, math.inf])
def test_bad_regularisation_weight_rejected(name, value):
    X, y = _synthetic("squared")
    with pytest.raises(ValueError, match=f"{name} must be a finite number >= 0, got {value}"):
        FiniteSum(X, y, "squared", **{name: value})


def test_negative_sample_weight_rejected():
    X, y = _synthetic("logistic")
    weights = torch.ones(len(y), dtype=torch.float64)
    weights[9] = -1.0
    with pytest.raises(ValueError, match=r"got min -1\.0"):
        FiniteSum(X, y, "logistic", sample_weight=weights)


def test_sample_weight_of_wrong_shape_rejected():
    X, y = _synthetic("logistic")
    with pytest.raises(ValueError, match=r"sample_weight must have shape \(40,\), got \(39,\)"):
        FiniteSum(X, y, "logistic", sample_weight=torch.ones(39, dtype=torch.float64))


def test_all_zero_sample_weights_rejected():
    X, y = _synthetic("logistic")
    with pytest.raises(ValueError, match="sample_weight sums to 0"):
        FiniteSum(X, y, "logistic", sample_weight=torch.zeros(len(y), dtype=torch.float64))


def test_targets_of_wrong_shape_rejected():
    X, y = _synthetic("squared")
    with pytest.raises(ValueError, match=r"y must have shape \(40,\) to match X of shape \(40, 6\), got \(39,\)"):
        FiniteSum(X, y[:-1], "squared")


def test_iterate_of_wrong_shape_rejected():
    X, y = _synthetic("multinomial")
    problem = FiniteSum(X, y, "multinomial", fit_intercept=True)
    with pytest.raises(ValueError, match=r"W must have shape \(7, 4\) for this problem, got \(7, 1\)"):
        problem.check_iterate(torch.zeros(7, 1, dtype=torch.float64))
