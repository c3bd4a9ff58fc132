r"""Regularised finite sums of linear-model losses: the problems of SGD, SVRG, SAGA and SARAH.

.. math::
    F(W) = \frac{1}{n}\sum_{i=1}^n f_i(W) + \mathrm{reg}\,\|W_{\mathrm{pen}}\|_1,\qquad
    f_i(W) = \hat s_i\,\psi(\tilde x_i^\top W, y_i) + \frac{\mathrm{reg\_l2}}{2}\|W_{\mathrm{pen}}\|^2 ,

where :math:`\tilde x_i` is sample i's feature vector (with a trailing 1 when ``fit_intercept``),
W has shape (d, k) (k = 1 except for the multinomial loss), :math:`W_{\mathrm{pen}}` is W without
its intercept row (the intercept is never penalised), and
:math:`\hat s_i = n\,s_i/\sum_j s_j` rescales the sample weights :math:`s_i` to mean 1. So
:math:`F` is the weighted mean of the losses: an integer weight k is the same problem as the
sample repeated k times, and unit weights give the plain mean.

Conversions to scikit-learn (same data, unit weights):
``LogisticRegression(C=C)`` minimises :math:`C\sum_i\psi_i + \tfrac12\|w\|^2`, i.e. ``reg_l2 = 1/(C n)``;
``Lasso(alpha)`` minimises :math:`\tfrac{1}{2n}\|y - Xw\|^2 + \alpha\|w\|_1`, i.e. ``reg = alpha``;
``Ridge(alpha)`` minimises :math:`\|y - Xw\|^2 + \alpha\|w\|^2`, i.e. ``reg_l2 = 2 alpha / (2n) = alpha/n``.
The helpers :func:`reg_l2_from_sklearn_C` and :func:`reg_from_sklearn_alpha` write them once.

The ℓ2 term sits in the smooth part, exactly, in every sample's gradient; the ℓ1 term is handled by
its prox. The gradient of the data term of sample i is the outer product :math:`\tilde x_i g_i^\top`
with :math:`g_i = \hat s_i\,\partial\psi/\partial z`, which the solvers exploit.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from unrolled.problems.glm_losses import GLMLoss, make_loss
from unrolled.prox import prox_l1

# Rows per block where a pass over all samples would otherwise allocate a copy of the features.
ROW_BLOCK = 16_384


def reg_l2_from_sklearn_C(C: float, sample_weight_sum: float) -> float:
    r"""Return ``reg_l2`` of the problem that scikit-learn's ``LogisticRegression(C=C)`` solves.

    scikit-learn minimises :math:`C\sum_i s_i\psi_i + \tfrac12\|w\|^2`; dividing by :math:`C\sum_i s_i`
    gives this module's weighted mean plus :math:`\tfrac{1}{2C\sum_i s_i}\|w\|^2`.
    """
    return 1.0 / (C * sample_weight_sum)


def reg_from_sklearn_alpha(alpha: float) -> float:
    r"""Return ``reg`` of the problem that scikit-learn's ``Lasso(alpha)`` solves: the same value.

    scikit-learn's :math:`\tfrac{1}{2n}\|y - Xw\|^2` is this module's mean of :math:`\tfrac12(z_i - y_i)^2`.
    """
    return alpha


class RegularisedLinearSum:
    """Gradient and prox shared by :class:`FiniteSum` and :class:`~unrolled.problems.finite_sum_batch.FiniteSumBatch`.

    Subclasses set ``loss``, ``features`` (..., n, dim), ``targets`` (..., n), ``sample_weight``
    (..., n), ``n_samples``, ``reg_l2``, ``reg`` and ``penalty_mask`` (dim, 1). A leading instance
    dimension, where there is one, passes through every method.
    """

    loss: GLMLoss
    features: Tensor
    targets: Tensor
    sample_weight: Tensor
    n_samples: int
    reg_l2: float
    reg: float
    penalty_mask: Tensor

    def all_derivatives(self, W: Tensor) -> Tensor:
        """Return the derivatives :math:`g_i` of every sample, shape (..., n, k)."""
        return self.sample_weight[..., None] * self.loss.derivative(self.features @ W, self.targets)

    def data_gradient(self, W: Tensor) -> Tensor:
        r"""Return the gradient of the data term, :math:`\frac1n\sum_i \tilde x_i g_i^\top`, shape (..., dim, k)."""
        return self.features.transpose(-2, -1) @ self.all_derivatives(W) / self.n_samples

    def l2_gradient(self, W: Tensor) -> Tensor:
        """Return the gradient of the ℓ2 term, ``reg_l2 · W`` on the penalised rows."""
        return self.reg_l2 * self.penalty_mask * W

    def gradient(self, W: Tensor) -> Tensor:
        """Return the gradient of the smooth part (data term and ℓ2 term) of the objective."""
        return self.data_gradient(W) + self.l2_gradient(W)

    def prox(self, W: Tensor, step_size: float | Tensor) -> Tensor:
        """Return the prox of ``step_size · reg · ‖W_pen‖₁`` at W (soft-thresholding; the intercept row is left alone).

        ``step_size`` may hold one value per instance, shape (B, 1, 1).
        """
        if self.reg == 0.0:
            return W
        return prox_l1(W, step_size * self.reg * self.penalty_mask)


def check_regularisation(reg_l2: float, reg: float) -> None:
    """Raise ``ValueError`` unless both weights are finite and >= 0."""
    for name, value in (("reg_l2", reg_l2), ("reg", reg)):
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {value}.")


def penalty_mask(dim: int, fit_intercept: bool, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Return the (dim, 1) mask that is 1 on the penalised rows of W and 0 on the intercept row."""
    mask = torch.ones(dim, 1, dtype=dtype, device=device)
    if fit_intercept:
        mask[-1] = 0.0
    return mask


class FiniteSum(RegularisedLinearSum):
    r"""A regularised finite sum of linear-model losses (see the module docstring for the objective).

    Args:
        X: features, shape (n, p): a dense tensor or a sparse COO / CSR tensor (kept sparse).
        y: targets, shape (n,): real values (``squared``), labels in {-1, +1} (``logistic``) or
            class indices 0..k-1 (``multinomial``).
        loss: ``squared``, ``logistic`` or ``multinomial``.
        reg_l2: weight of :math:`\tfrac12\|W\|^2` (>= 0).
        reg: weight of :math:`\|W\|_1` (>= 0), handled by the prox.
        sample_weight: non-negative weights of shape (n,), rescaled to mean 1; None for unit weights.
        fit_intercept: add an unpenalised intercept (a trailing feature equal to 1).
        n_classes: number of classes of the multinomial loss; by default ``max(y) + 1``.
        dtype: computation dtype; float64 by default, as the solvers compare with scikit-learn to 1e-6.
        device: where the data and iterates live.
    """

    def __init__(
        self,
        X: Tensor,
        y: Tensor,
        loss: str,
        *,
        reg_l2: float = 0.0,
        reg: float = 0.0,
        sample_weight: Tensor | None = None,
        fit_intercept: bool = False,
        n_classes: int | None = None,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str = "cpu",
    ) -> None:
        X = torch.as_tensor(X)
        y = torch.as_tensor(y)
        if X.ndim != 2:
            raise ValueError(f"X must have shape (n_samples, n_features), got shape {tuple(X.shape)}.")
        if y.shape != (X.shape[0],):
            raise ValueError(f"y must have shape ({X.shape[0]},) to match X of shape {tuple(X.shape)}, got {tuple(y.shape)}.")
        check_regularisation(reg_l2, reg)
        _check_finite_features(X)

        y = y.to(dtype=dtype, device=device)
        if loss == "multinomial" and n_classes is None:
            n_classes = int(y.max().item()) + 1
        self.loss: GLMLoss = make_loss(loss, n_classes)
        self.loss.check_targets(y)
        self.targets = y
        self.n_samples, self.n_features = X.shape
        self.n_outputs = self.loss.n_outputs(y)
        self.fit_intercept = fit_intercept
        self.reg_l2 = float(reg_l2)
        self.reg = float(reg)
        self.dtype = dtype
        self.device = torch.device(device)
        self.features = _with_intercept(X.to(dtype=dtype, device=device), fit_intercept)
        self.sparse = self.features.layout != torch.strided
        self.sample_weight = _scaled_weights(sample_weight, self.n_samples, dtype, self.device)
        self.penalty_mask = penalty_mask(self.dim, fit_intercept, dtype, self.device)

    @property
    def dim(self) -> int:
        """Rows of W: the number of features, plus one with an intercept."""
        return self.n_features + int(self.fit_intercept)

    def zeros(self) -> Tensor:
        """Return the starting point W = 0 of shape (dim, n_outputs)."""
        return torch.zeros(self.dim, self.n_outputs, dtype=self.dtype, device=self.device)

    def rows(self, index: Tensor) -> Tensor:
        """Return the dense feature rows :math:`\\tilde x_i` of the samples ``index``, shape (b, dim)."""
        if self.sparse:
            return self.features.index_select(0, index).to_dense()
        return self.features[index]

    def derivatives(self, W: Tensor, rows: Tensor, index: Tensor) -> Tensor:
        r"""Return :math:`g_i = \hat s_i\,\partial\psi/\partial z(\tilde x_i^\top W, y_i)` of shape (b, k) for the given rows."""
        return self.sample_weight[index, None] * self.loss.derivative(rows @ W, self.targets[index])

    @torch.no_grad()
    def objective(self, W: Tensor) -> float:
        """Return F(W), evaluated in float64 whatever the computation dtype.

        Features of another dtype are converted block by block, so the evaluation never holds a
        float64 copy of the whole matrix.
        """
        W64 = W.to(torch.float64)
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        for start in range(0, self.n_samples, ROW_BLOCK):
            index = torch.arange(start, min(start + ROW_BLOCK, self.n_samples), device=self.device)
            margins = self.rows(index).to(torch.float64) @ W64
            losses = self.loss.value(margins, self.targets[index].to(torch.float64))
            total += (self.sample_weight[index].to(torch.float64) * losses).sum()
        penalised = W64 * self.penalty_mask.to(torch.float64)
        value = total / self.n_samples
        # Terms with a zero weight are left out, so that an overflowing W gives inf rather than 0 · inf = NaN.
        if self.reg_l2 > 0:
            value = value + 0.5 * self.reg_l2 * (penalised**2).sum()
        if self.reg > 0:
            value = value + self.reg * penalised.abs().sum()
        return float(value)

    def sample_lipschitz(self) -> Tensor:
        r"""Return :math:`L_i = \hat s_i\,\mathrm{curvature}\,\|\tilde x_i\|^2`, the Lipschitz constants of the data gradients, shape (n,)."""
        if self.sparse:
            squared_norms = (self.features.to_sparse_coo() ** 2).sum(dim=1).to_dense()
        else:
            squared_norms = (self.features**2).sum(dim=1)
        return self.loss.curvature * self.sample_weight * squared_norms

    @torch.no_grad()
    def lipschitz(self, max_iter: int = 1000, tol: float = 1e-9) -> float:
        r"""Return L of the full smooth gradient: :math:`\mathrm{curvature}\,\lambda_{\max}(\tilde X^\top \hat S\tilde X)/n + \mathrm{reg\_l2}`.

        The eigenvalue comes from power iteration on products with the stored features (dense or
        sparse, never copied), stopped once it changes by less than ``tol`` relative.
        """
        generator = torch.Generator(device="cpu").manual_seed(0)
        v = torch.randn(self.dim, 1, dtype=torch.float64, generator=generator).to(self.device)
        estimate = 0.0
        for _ in range(max_iter):
            v = v / torch.linalg.vector_norm(v)
            image = self.features.T @ (self.sample_weight[:, None] * (self.features @ v.to(self.dtype)))
            image = image.to(torch.float64)
            new_estimate = float((v * image).sum())
            v = image
            if new_estimate == 0.0 or abs(new_estimate - estimate) <= tol * new_estimate:
                estimate = new_estimate
                break
            estimate = new_estimate
        return self.loss.curvature * estimate / self.n_samples + self.reg_l2

    def check_iterate(self, W: Tensor) -> None:
        """Raise ``ValueError`` unless W has shape (dim, n_outputs)."""
        if W.shape != (self.dim, self.n_outputs):
            raise ValueError(f"W must have shape ({self.dim}, {self.n_outputs}) for this problem, got {tuple(W.shape)}.")


def _check_finite_features(X: Tensor) -> None:
    """Raise ``ValueError`` naming the first non-finite entry of X."""
    if X.layout == torch.sparse_coo:
        values = X.coalesce().values()
    elif X.layout == torch.sparse_csr:
        values = X.values()
    else:
        values = X
    # Block by block: a mask of the whole matrix would cost as much memory as a large X itself.
    for start in range(0, values.shape[0], ROW_BLOCK):
        bad = ~torch.isfinite(values[start : start + ROW_BLOCK])
        if bool(bad.any()):
            if X.layout == torch.strided:
                row, column = (int(v) for v in torch.nonzero(bad)[0])
                where = f"first at sample {start + row}, feature {column}"
            else:
                where = "in the stored values"
            raise ValueError(
                f"X contains NaN or infinite entries ({where}). The solvers need finite features: "
                "fill them first, for example with unrolled.problems.datasets.impute."
            )


def _with_intercept(X: Tensor, fit_intercept: bool) -> Tensor:
    """Return X with a trailing column of ones when ``fit_intercept``; sparse input stays sparse (COO)."""
    if X.layout != torch.strided:
        X = X.to_sparse_coo().coalesce()
    if not fit_intercept:
        return X
    ones = torch.ones(X.shape[0], 1, dtype=X.dtype, device=X.device)
    if X.layout == torch.strided:
        return torch.cat([X, ones], dim=1)
    return torch.cat([X, ones.to_sparse_coo()], dim=1).coalesce()


def _scaled_weights(sample_weight: Tensor | None, n_samples: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Return the sample weights rescaled to mean 1 (ones when None), after checking them."""
    if sample_weight is None:
        return torch.ones(n_samples, dtype=dtype, device=device)
    weights = torch.as_tensor(sample_weight, dtype=dtype, device=device)
    if weights.shape != (n_samples,):
        raise ValueError(f"sample_weight must have shape ({n_samples},), got {tuple(weights.shape)}.")
    if not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()):
        raise ValueError(f"sample_weight must be finite and >= 0; got min {weights.min().item()} (or NaN/inf).")
    total = weights.sum()
    if total <= 0:
        raise ValueError("sample_weight sums to 0: at least one sample needs a positive weight.")
    return weights * (n_samples / total)
