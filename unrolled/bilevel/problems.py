r"""Bilevel problems: hyperparameters chosen by an outer loss evaluated at the solution of an inner problem.

.. math::
    \min_h\; F(z^*(h), h)\quad\text{subject to}\quad
    z^*(h) = \arg\min_z\; G(z, h) + \lambda(h)\,\|z\|_1 ,

with G smooth in z and h, and the ℓ1 term absent (``inner_l1`` returns None) for a smooth inner
problem. The hypergradient :math:`\mathrm dF(z^*(h), h)/\mathrm dh` is what
:mod:`unrolled.bilevel.hypergradient` computes, by differentiating through inner iterations or
implicitly.

:class:`BilevelProblem` needs ``inner_smooth`` (G), ``outer`` (F), ``inner_lipschitz`` and, for ℓ1
problems, ``inner_l1``. Gradients, Hessian-vector products and cross derivatives then come from
autograd. :class:`LinearModelBilevel` writes them in closed form for linear models (the inner
problem is a weighted finite sum of :mod:`~unrolled.problems.glm_losses` losses), and adds the
per-sample oracles that the stochastic solvers of :mod:`unrolled.bilevel.stochastic` sample.

Three families are defined here, each with its domain of hyperparameters:

- :class:`RegularisationSelection`: ℓ2 weights :math:`\rho = e^h`, one per feature or one in all.
  The log parametrisation keeps every real h valid.
- :class:`HyperCleaning`: one weight :math:`\sigma(h_i)\in(0, 1)` per training sample (Franceschi et al.,
  2017), every real h valid.
- :class:`LassoSelection`: the Lasso weight :math:`\lambda = h \ge 0` itself. A negative h is an error
  (``check_hyper``); the outer solvers project onto :math:`h \ge 0` (``project_hyper``).
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from unrolled.bilevel.linear_systems import conjugate_gradient
from unrolled.problems.glm_losses import GLMLoss, make_loss
from unrolled.prox import prox_l1

# Armijo constant of the Newton line search (the usual 1e-4), and the smallest step it tries.
ARMIJO = 1e-4
MIN_LINE_STEP = 1e-12
# Predicted decrease, relative to the objective, below which float64 rounding hides the Armijo test.
RESOLVABLE_DECREASE = 1e-13


@dataclass(frozen=True)
class InnerSolution:
    """An inner solution :math:`z` with its optimality residual (see :meth:`BilevelProblem.inner_residual`).

    ``n_iter`` counts the solver's iterations, ``n_oracles`` its full-batch gradients and Hessian-vector products.
    """

    z: Tensor
    residual: float
    n_iter: int
    converged: bool
    n_oracles: int


class BilevelProblem(abc.ABC):
    """The interface every hypergradient and bilevel solver works with (see the module docstring)."""

    @abc.abstractmethod
    def initial_hyper(self) -> Tensor:
        """Return the default starting hyperparameters, a 1-D tensor."""

    @abc.abstractmethod
    def initial_inner(self) -> Tensor:
        """Return the default starting inner variable (zeros)."""

    @abc.abstractmethod
    def inner_smooth(self, z: Tensor, hyper: Tensor) -> Tensor:
        """Return G(z, h), the smooth part of the inner objective, as a scalar tensor differentiable in z and h."""

    @abc.abstractmethod
    def outer(self, z: Tensor, hyper: Tensor) -> Tensor:
        """Return F(z, h), the outer objective, as a scalar tensor differentiable in z and h."""

    @abc.abstractmethod
    def inner_lipschitz(self, hyper: Tensor) -> float:
        """Return an upper bound on the Lipschitz constant of :math:`\\nabla_z G(\\cdot, h)`."""

    def inner_l1(self, hyper: Tensor) -> Tensor | None:
        """Return the weight of :math:`\\|z\\|_1` in the inner problem (differentiable in h), or None for a smooth inner problem."""
        return None

    def check_hyper(self, hyper: Tensor) -> None:
        """Raise ``ValueError`` naming the value when ``hyper`` lies outside the problem's domain."""
        if hyper.ndim != 1:
            raise ValueError(f"hyperparameters must be a 1-D tensor, got shape {tuple(hyper.shape)}.")
        if not bool(torch.isfinite(hyper).all()):
            raise ValueError(f"hyperparameters must be finite, got {hyper.tolist()[:10]}.")

    def project_hyper(self, hyper: Tensor) -> Tensor:
        """Return the nearest valid hyperparameters (the identity where every real vector is valid)."""
        return hyper

    # Derivatives. Subclasses may override them with closed forms; tests compare both.

    def inner_gradient(self, z: Tensor, hyper: Tensor) -> Tensor:
        r"""Return :math:`\nabla_z G(z, h)`, differentiable in z and h where they require grad."""
        # Keep the graph only where the caller differentiates further (grad mode on at the call).
        create_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            z_ = z if z.requires_grad else z.detach().requires_grad_(True)
            (gradient,) = torch.autograd.grad(self.inner_smooth(z_, hyper), z_, create_graph=create_graph)
        return gradient

    def inner_hvp(self, z: Tensor, hyper: Tensor, v: Tensor) -> Tensor:
        r"""Return :math:`\nabla^2_{zz} G(z, h)\,v` (not differentiable further)."""
        with torch.enable_grad():
            z_ = z.detach().requires_grad_(True)
            gradient = self.inner_gradient(z_, hyper.detach())
            (product,) = torch.autograd.grad(gradient, z_, grad_outputs=v)
        return product

    def inner_hvp_operator(self, z: Tensor, hyper: Tensor) -> Callable[[Tensor], Tensor]:
        r"""Return :math:`v \mapsto \nabla^2_{zz} G(z, h)\,v` at a fixed point, for the many products of one linear solve."""
        return lambda v: self.inner_hvp(z, hyper, v)

    def inner_cross(self, z: Tensor, hyper: Tensor, v: Tensor) -> Tensor:
        r"""Return :math:`\nabla^2_{hz} G(z, h)\,v = \partial_h\langle\nabla_z G(z, h), v\rangle`, shaped like h."""
        with torch.enable_grad():
            hyper_ = hyper.detach().requires_grad_(True)
            gradient = self.inner_gradient(z.detach(), hyper_)
            if not gradient.requires_grad:  # G's gradient does not depend on h (the Lasso's smooth part).
                return torch.zeros_like(hyper)
            (product,) = torch.autograd.grad(gradient, hyper_, grad_outputs=v, allow_unused=True)
        return torch.zeros_like(hyper) if product is None else product

    def outer_gradients(self, z: Tensor, hyper: Tensor) -> tuple[Tensor, Tensor]:
        r"""Return :math:`(\nabla_z F(z, h), \nabla_h F(z, h))`."""
        with torch.enable_grad():
            z_ = z.detach().requires_grad_(True)
            hyper_ = hyper.detach().requires_grad_(True)
            grad_z, grad_h = torch.autograd.grad(self.outer(z_, hyper_), (z_, hyper_), allow_unused=True)
        return grad_z, torch.zeros_like(hyper) if grad_h is None else grad_h

    # Inner optimality and solution.

    @torch.no_grad()
    def inner_residual(self, z: Tensor, hyper: Tensor) -> float:
        r"""Return the optimality residual of z: :math:`\|\nabla_z G\|`, or with an ℓ1 term the norm of the
        gradient mapping :math:`L\,\|z - \operatorname{prox}_{\lambda/L}(z - \nabla_z G/L)\|`, 0 exactly at the solution."""
        gradient = self.inner_gradient(z, hyper)
        l1 = self.inner_l1(hyper)
        if l1 is None:
            return float(torch.linalg.vector_norm(gradient))
        lipschitz = self.inner_lipschitz(hyper)
        mapped = prox_l1(z - gradient / lipschitz, l1 / lipschitz)
        return float(lipschitz * torch.linalg.vector_norm(z - mapped))

    @torch.no_grad()
    def solve_inner(self, hyper: Tensor, z0: Tensor | None = None, *, tol: float = 1e-10, max_iter: int = 100) -> InnerSolution:
        """Solve the inner problem to ``inner_residual <= tol``.

        A smooth inner problem is solved by Newton's method with conjugate-gradient steps and an
        Armijo line search (``max_iter`` Newton steps). With an ℓ1 term, FISTA (``100 · max_iter``
        iterations at most) finds the support and signs. Newton steps on that support, with the
        signs fixed, then reach the residual quickly, because FISTA alone converges slowly on a
        problem that is not strongly convex.
        """
        self.check_hyper(hyper)
        z = self.initial_inner() if z0 is None else z0.detach().clone()
        if self.inner_l1(hyper) is None:
            return _newton(self, hyper, z, torch.ones_like(z, dtype=torch.bool), tol, max_iter)
        return _fista_then_newton(self, hyper, z, tol, max_iter)


def _newton(problem: BilevelProblem, hyper: Tensor, z: Tensor, support: Tensor, tol: float, max_iter: int) -> InnerSolution:
    """Newton-CG on the coordinates in ``support`` (the others stay fixed), for G plus λ·sign(z)·z on that support."""
    l1 = problem.inner_l1(hyper)
    signs = torch.sign(z) * support

    def objective(point: Tensor) -> float:
        value = problem.inner_smooth(point, hyper)
        if l1 is not None:
            value = value + (l1 * point.abs()).sum()
        return float(value)

    def restricted_gradient(point: Tensor) -> Tensor:
        gradient = problem.inner_gradient(point, hyper)
        if l1 is not None:
            gradient = gradient + l1 * signs
        return gradient * support

    residual = problem.inner_residual(z, hyper)
    n_oracles = 1
    for n_iter in range(1, max_iter + 1):
        if residual <= tol:
            return InnerSolution(z, residual, n_iter - 1, True, n_oracles)
        gradient = restricted_gradient(z)
        norm = float(torch.linalg.vector_norm(gradient))
        # Forcing term min(1/2, sqrt‖g‖): superlinear convergence near the solution (Nocedal & Wright, 7.1).
        hessian = problem.inner_hvp_operator(z, hyper)
        newton = conjugate_gradient(
            lambda v: hessian(v * support) * support,
            -gradient,
            tol=min(0.5, math.sqrt(norm)),
            max_iter=max(10, z.numel()),
        )
        direction = newton.solution
        n_oracles += 2 + newton.n_iter
        slope = float((gradient * direction).sum())
        if slope >= 0:  # CG stopped on a non-descent direction: fall back to the gradient.
            direction, slope = -gradient, -(norm**2)
        start, step = objective(z), 1.0
        # Near the solution the predicted decrease falls below the objective's rounding error, so the
        # Armijo test cannot decide. The full Newton step is then the right one.
        resolvable = -slope > RESOLVABLE_DECREASE * max(1.0, abs(start))
        while step > MIN_LINE_STEP:
            candidate = z + step * direction
            # With an ℓ1 term a step may not cross zero, or the signs (and the objective's form) would change.
            if l1 is None or bool((torch.sign(candidate) * signs >= 0).all()):
                if not resolvable or objective(candidate) <= start + ARMIJO * step * slope:
                    break
            step /= 2
        z = z + step * direction
        residual = problem.inner_residual(z, hyper)
    return InnerSolution(z, residual, max_iter, residual <= tol, n_oracles)


def _fista_then_newton(problem: BilevelProblem, hyper: Tensor, z: Tensor, tol: float, max_iter: int) -> InnerSolution:
    """FISTA until the support settles, then Newton on the support (see :meth:`BilevelProblem.solve_inner`)."""
    l1 = problem.inner_l1(hyper)
    step = 1.0 / problem.inner_lipschitz(hyper)
    y, t = z.clone(), 1.0
    n_fista = 100 * max_iter
    n_oracles = 0
    previous_support = None
    for n_iter in range(1, n_fista + 1):
        z_next = prox_l1(y - step * problem.inner_gradient(y, hyper), step * l1)
        t_next = (1 + math.sqrt(1 + 4 * t * t)) / 2
        y = z_next + ((t - 1) / t_next) * (z_next - z)
        z, t = z_next, t_next
        if n_iter % 50 == 0:
            residual = problem.inner_residual(z, hyper)
            if residual <= tol:
                return InnerSolution(z, residual, n_iter, True, n_oracles + n_iter)
            # Newton pays off once the support has settled: try it only when 50 iterations left it unchanged.
            support = z != 0
            if previous_support is not None and torch.equal(support, previous_support):
                polished = _newton(problem, hyper, z, support, tol, max_iter)
                n_oracles += polished.n_oracles
                if polished.converged:
                    return InnerSolution(polished.z, polished.residual, n_iter + polished.n_iter, True, n_oracles + n_iter)
            previous_support = support
    residual = problem.inner_residual(z, hyper)
    return InnerSolution(z, residual, n_fista, residual <= tol, n_oracles + n_fista)


class LinearModelBilevel(BilevelProblem):
    r"""Bilevel problems on a linear model: the inner problem is a finite sum over the training samples.

    .. math::
        G(W, h) = \frac1n\sum_{i=1}^n \omega_i(h)\,\psi(\tilde x_i^\top W, y_i)
                  + \frac12\sum_j \rho_j(h)\,\|W_j\|^2,\qquad
        F(W, h) = \frac1m\sum_{j=1}^m \psi(\tilde x_j^{\mathrm{val}\top} W, y_j^{\mathrm{val}}),

    where :math:`W_j` is row j of W (d, k), the intercept row (with ``fit_intercept``) is never
    penalised, and the subclass defines the sample weights :math:`\omega(h)`, the ℓ2 weights
    :math:`\rho(h)` and the ℓ1 weight. F does not depend on h. Weights are used as they are, not
    rescaled: a sample weight of 0 removes the sample.

    Besides the full-batch derivatives (closed forms of the autograd defaults), the class gives the
    per-sample oracles of the stochastic solvers. Sample i enters the gradient, the Hessian-vector
    product and the cross derivative through a short coefficient each (k numbers, k numbers and
    one number), so that SABA stores O(n k) numbers rather than n full gradients.

    Args:
        X_train, y_train: the inner problem's samples, (n, p) and (n,), targets as in
            :class:`~unrolled.problems.finite_sum.FiniteSum`.
        X_val, y_val: the outer problem's samples.
        loss: ``squared``, ``logistic`` or ``multinomial``.
        X_test, y_test: optional held-out samples for :meth:`error_rate` and :meth:`mean_loss`.
        fit_intercept: add an unpenalised intercept.
        n_classes: classes of the multinomial loss.
        dtype: computation dtype (float64 by default: hypergradients are compared with finite differences).
        device: where the data, iterates and hyperparameters live (``cuda`` runs the mini-batches on a GPU).
    """

    def __init__(
        self,
        X_train: Tensor,
        y_train: Tensor,
        X_val: Tensor,
        y_val: Tensor,
        loss: str,
        *,
        X_test: Tensor | None = None,
        y_test: Tensor | None = None,
        fit_intercept: bool = False,
        n_classes: int | None = None,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str = "cpu",
    ) -> None:
        if loss == "multinomial" and n_classes is None:
            n_classes = int(max(y_train.max(), y_val.max())) + 1
        self.loss: GLMLoss = make_loss(loss, n_classes)
        self.dtype = dtype
        self.device = torch.device(device)
        self.fit_intercept = fit_intercept

        self.splits: dict[str, tuple[Tensor, Tensor]] = {}
        for split, X, y in (("train", X_train, y_train), ("val", X_val, y_val), ("test", X_test, y_test)):
            if X is None:
                continue
            X = torch.as_tensor(X).to(dtype=dtype, device=self.device)
            y = torch.as_tensor(y).to(dtype=dtype, device=self.device)
            if X.ndim != 2 or y.shape != (X.shape[0],):
                raise ValueError(f"{split} features must be (n, p) and targets (n,), got {tuple(X.shape)} and {tuple(y.shape)}.")
            if not bool(torch.isfinite(X).all()):
                raise ValueError(f"the {split} features contain NaN or infinite entries; impute them first (unrolled.problems.datasets.impute).")
            self.loss.check_targets(y)
            if fit_intercept:
                X = torch.cat([X, X.new_ones(X.shape[0], 1)], dim=1)
            self.splits[split] = (X, y)

        if self.splits["val"][0].shape[1] != self.splits["train"][0].shape[1]:
            raise ValueError(
                f"training and validation features must have the same width, got {self.splits['train'][0].shape[1]} "
                f"and {self.splits['val'][0].shape[1]} columns."
            )

        self.X, self.y = self.splits["train"]
        self.X_val, self.y_val = self.splits["val"]
        self.n_samples, self.dim = self.X.shape
        self.n_val = self.X_val.shape[0]
        self.n_outputs = self.loss.n_outputs(self.y)

        self.penalty_mask = torch.ones(self.dim, 1, dtype=dtype, device=self.device)
        if fit_intercept:
            self.penalty_mask[-1] = 0.0
        self._data_curvature = self.loss.curvature * float(torch.linalg.matrix_norm(self.X, ord=2)) ** 2 / self.n_samples

    # True when sample i's weight depends on h_i alone (then the cross derivative has per-sample terms).
    per_sample_hyper = False

    # What a subclass defines.

    @abc.abstractmethod
    def sample_weights(self, hyper: Tensor) -> Tensor | None:
        """Return :math:`\\omega(h)` of shape (n,), or None for unit weights that do not depend on h."""

    @abc.abstractmethod
    def l2_weights(self, hyper: Tensor) -> Tensor:
        """Return :math:`\\rho(h)` broadcastable to W (d, k), zero on the intercept row."""

    def sample_weight_derivative(self, hyper: Tensor, index: Tensor) -> Tensor:
        """Return :math:`\\partial\\omega_i/\\partial h_i` at the samples ``index`` (problems with ``per_sample_hyper`` only)."""
        raise NotImplementedError(f"{type(self).__name__} has no per-sample hyperparameters.")

    # Full-batch derivatives in closed form.

    def initial_inner(self) -> Tensor:
        return torch.zeros(self.dim, self.n_outputs, dtype=self.dtype, device=self.device)

    def _weighted(self, values: Tensor, weights: Tensor | None) -> Tensor:
        """Multiply per-sample values (n, ...) by the sample weights, or return them unchanged when there are none."""
        return values if weights is None else weights.reshape(-1, *([1] * (values.ndim - 1))) * values

    def inner_smooth(self, z: Tensor, hyper: Tensor) -> Tensor:
        losses = self._weighted(self.loss.value(self.X @ z, self.y), self.sample_weights(hyper))
        return losses.mean() + 0.5 * (self.l2_weights(hyper) * z**2).sum()

    def outer(self, z: Tensor, hyper: Tensor) -> Tensor:
        return self.loss.value(self.X_val @ z, self.y_val).mean()

    def inner_gradient(self, z: Tensor, hyper: Tensor) -> Tensor:
        derivatives = self._weighted(self.loss.derivative(self.X @ z, self.y), self.sample_weights(hyper))
        return self.X.T @ derivatives / self.n_samples + self.l2_weights(hyper) * z

    def inner_hvp(self, z: Tensor, hyper: Tensor, v: Tensor) -> Tensor:
        return self.inner_hvp_operator(z, hyper)(v)

    @torch.no_grad()
    def inner_hvp_operator(self, z: Tensor, hyper: Tensor) -> Callable[[Tensor], Tensor]:
        # The margins and weights are computed once: a product then costs two matrix products, not three.
        margins = self.X @ z
        weights = self.sample_weights(hyper)
        l2_weights = self.l2_weights(hyper)

        @torch.no_grad()
        def product(v: Tensor) -> Tensor:
            products = self._weighted(self.loss.hessian_product(margins, self.y, self.X @ v), weights)
            return self.X.T @ products / self.n_samples + l2_weights * v

        return product

    def inner_lipschitz(self, hyper: Tensor) -> float:
        with torch.no_grad():
            weights = self.sample_weights(hyper)
            largest_weight = 1.0 if weights is None else float(weights.max())
            return largest_weight * self._data_curvature + float(self.l2_weights(hyper).max())

    # Per-sample oracles of the stochastic solvers: coefficients c_i, expanded as X[index]ᵀ C / b.

    def gradient_coefficients(self, z: Tensor, hyper: Tensor, index: Tensor) -> Tensor:
        r"""Return :math:`\omega_i\,\psi'(\tilde x_i^\top W)` at the samples ``index``, shape (b, k)."""
        derivatives = self.loss.derivative(self.X[index] @ z, self.y[index])
        return self._weighted(derivatives, self._weights_at(hyper, index))

    def hvp_coefficients(self, z: Tensor, hyper: Tensor, v: Tensor, index: Tensor) -> Tensor:
        r"""Return :math:`\omega_i\,\nabla^2\psi(\tilde x_i^\top W)\,(\tilde x_i^\top v)` at the samples ``index``, shape (b, k)."""
        rows = self.X[index]
        products = self.loss.hessian_product(rows @ z, self.y[index], rows @ v)
        return self._weighted(products, self._weights_at(hyper, index))

    def cross_coefficients(self, z: Tensor, hyper: Tensor, v: Tensor, index: Tensor) -> Tensor | None:
        r"""Return :math:`\partial_{h_i}\omega_i\,\langle\psi'(\tilde x_i^\top W), \tilde x_i^\top v\rangle`, shape (b,),
        or None when the samples' weights do not depend on h (the cross derivative then comes from the ℓ2 term only)."""
        if not self.per_sample_hyper:
            return None
        slopes = self.sample_weight_derivative(hyper, index)
        rows = self.X[index]
        return slopes * (self.loss.derivative(rows @ z, self.y[index]) * (rows @ v)).sum(-1)

    def outer_coefficients(self, z: Tensor, index: Tensor) -> Tensor:
        r"""Return :math:`\psi'(\tilde x_j^{\mathrm{val}\top} W)` at the validation samples ``index``, shape (b, k)."""
        return self.loss.derivative(self.X_val[index] @ z, self.y_val[index])

    def expand(self, index: Tensor, coefficients: Tensor, *, split: str = "train") -> Tensor:
        """Return the mean of the samples' contributions, ``X[index]ᵀ coefficients / b``, shape (d, k)."""
        X = self.X if split == "train" else self.X_val
        return X[index].T @ coefficients / index.numel()

    def expand_cross(self, index: Tensor, coefficients: Tensor, hyper: Tensor) -> Tensor:
        """Return the mean of the per-sample cross derivatives, the coefficients placed at h_i, divided by b."""
        return torch.zeros_like(hyper).index_add_(0, index, coefficients) / index.numel()

    def regulariser_parts(self, z: Tensor, hyper: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        r"""Return the exact ℓ2 parts :math:`(\rho\odot W,\ \rho\odot v,\ \partial_h\langle\rho(h)\odot W, v\rangle)`."""
        with torch.enable_grad():
            hyper_ = hyper.detach().requires_grad_(True)
            weights = self.l2_weights(hyper_)
            if weights.requires_grad:
                (cross,) = torch.autograd.grad((weights * z * v).sum(), hyper_)
            else:
                cross = torch.zeros_like(hyper)
        weights = weights.detach()
        return weights * z, weights * v, cross

    def _weights_at(self, hyper: Tensor, index: Tensor) -> Tensor | None:
        weights = self.sample_weights(hyper)
        return None if weights is None else weights[index]

    # Scores of a solution.

    @torch.no_grad()
    def mean_loss(self, z: Tensor, split: str = "test") -> float:
        """Return the unweighted mean loss of W on ``split`` (``train``, ``val`` or ``test``)."""
        X, y = self._split(split)
        return float(self.loss.value(X @ z, y).mean())

    @torch.no_grad()
    def error_rate(self, z: Tensor, split: str = "test") -> float:
        """Return the fraction of misclassified samples of ``split`` (classification losses only)."""
        X, y = self._split(split)
        margins = X @ z
        if self.loss.name == "logistic":
            predicted = torch.where(margins[:, 0] >= 0, 1.0, -1.0).to(y.dtype)
        elif self.loss.name == "multinomial":
            predicted = margins.argmax(dim=1).to(y.dtype)
        else:
            raise ValueError(f"error_rate needs a classification loss, this problem's is {self.loss.name!r}; use mean_loss.")
        return float((predicted != y).to(torch.float64).mean())

    def _split(self, split: str) -> tuple[Tensor, Tensor]:
        if split not in self.splits:
            raise ValueError(f"split must be one of {sorted(self.splits)}, got {split!r}.")
        return self.splits[split]


class RegularisationSelection(LinearModelBilevel):
    r"""Learn ℓ2 weights :math:`\rho = e^h` of a linear model on a validation loss (Pedregosa, 2016).

    With ``per_feature`` each penalised row of W has its own weight (h has d entries, d the number
    of features); otherwise h has one entry. The log-weights live in the box ``log_bounds``, because
    on separable data the inner solution diverges as a weight tends to 0. ``check_hyper`` raises
    ``ValueError`` for values outside the box, and ``project_hyper`` clips to it. Other arguments
    as in :class:`LinearModelBilevel`.
    """

    def __init__(self, *args, per_feature: bool = True, log_bounds: tuple[float, float] = (-12.0, 6.0), **kwargs) -> None:
        super().__init__(*args, **kwargs)
        low, high = log_bounds
        if not low < high:
            raise ValueError(f"log_bounds must be (low, high) with low < high, got {log_bounds}.")
        self.per_feature = per_feature
        self.log_bounds = (float(low), float(high))
        self.n_hyper = self.dim - int(self.fit_intercept) if per_feature else 1

    def initial_hyper(self) -> Tensor:
        return torch.zeros(self.n_hyper, dtype=self.dtype, device=self.device)

    def sample_weights(self, hyper: Tensor) -> None:
        return None

    def l2_weights(self, hyper: Tensor) -> Tensor:
        weights = torch.exp(hyper)
        if not self.per_feature:
            return weights * self.penalty_mask
        if self.fit_intercept:
            weights = torch.cat([weights, weights.new_zeros(1)])
        return weights[:, None]

    def check_hyper(self, hyper: Tensor) -> None:
        super().check_hyper(hyper)
        if hyper.shape != (self.n_hyper,):
            raise ValueError(f"expected {self.n_hyper} log ℓ2 weights, got shape {tuple(hyper.shape)}.")
        low, high = self.log_bounds
        if float(hyper.min()) < low or float(hyper.max()) > high:
            raise ValueError(
                f"log ℓ2 weights must lie in [{low}, {high}] (log_bounds), got values from {float(hyper.min()):.4g} "
                f"to {float(hyper.max()):.4g}. Clip them with project_hyper or widen log_bounds."
            )

    def project_hyper(self, hyper: Tensor) -> Tensor:
        return hyper.clamp(*self.log_bounds)


class HyperCleaning(LinearModelBilevel):
    r"""Data hyper-cleaning (Franceschi et al., 2017): one weight :math:`\sigma(h_i)` per training sample.

    The inner problem fits the (possibly mislabelled) training samples weighted by
    :math:`\sigma(h_i)` with the fixed ℓ2 weight ``reg_l2``. The outer loss is the mean loss on a
    clean validation split, so minimising it drives the weights of mislabelled samples to 0.
    """

    per_sample_hyper = True

    def __init__(self, *args, reg_l2: float, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not (math.isfinite(reg_l2) and reg_l2 > 0):
            raise ValueError(f"reg_l2 must be a finite number > 0 so that the inner problem is strongly convex, got {reg_l2}.")
        self.reg_l2 = reg_l2
        self.n_hyper = self.n_samples

    def initial_hyper(self) -> Tensor:
        return torch.zeros(self.n_samples, dtype=self.dtype, device=self.device)

    def sample_weights(self, hyper: Tensor) -> Tensor:
        return torch.sigmoid(hyper)

    def sample_weight_derivative(self, hyper: Tensor, index: Tensor) -> Tensor:
        weights = torch.sigmoid(hyper[index])
        return weights * (1.0 - weights)

    def l2_weights(self, hyper: Tensor) -> Tensor:
        return self.reg_l2 * self.penalty_mask

    def inner_lipschitz(self, hyper: Tensor) -> float:
        return self._data_curvature + self.reg_l2

    def check_hyper(self, hyper: Tensor) -> None:
        super().check_hyper(hyper)
        if hyper.shape != (self.n_samples,):
            raise ValueError(f"expected one weight logit per training sample ({self.n_samples}), got shape {tuple(hyper.shape)}.")


class LassoSelection(LinearModelBilevel):
    r"""Choose the Lasso weight on a validation split: :math:`G(\beta) = \frac{1}{2n}\|y - X\beta\|^2`,
    ℓ1 weight :math:`\lambda = h_0 \ge 0`, and F the half mean squared validation error.

    Scaled by :math:`1/\sqrt n`, G is the ":math:`\tfrac12`" form :math:`\tfrac12\|y' - A\beta\|^2` with
    :math:`A = X/\sqrt n`, :math:`y' = y/\sqrt n`, so on the support S of the solution
    :math:`\mathrm d\beta_S/\mathrm d\lambda = -(A_S^\top A_S)^{-1}\operatorname{sign}(\beta_S)` and 0 elsewhere.
    No intercept: centre the data (``load_dataset('diabetes')`` does).
    """

    def __init__(self, X_train: Tensor, y_train: Tensor, X_val: Tensor, y_val: Tensor, **kwargs) -> None:
        if kwargs.get("fit_intercept"):
            raise ValueError("LassoSelection takes no intercept (the support would include it); centre X and y instead.")
        super().__init__(X_train, y_train, X_val, y_val, "squared", **kwargs)
        self.n_hyper = 1

    def initial_hyper(self) -> Tensor:
        # A tenth of the weight above which the solution is 0: ‖Xᵀy‖_∞ / n.
        return torch.full((1,), 0.1 * self.reg_max(), dtype=self.dtype, device=self.device)

    def reg_max(self) -> float:
        """Return :math:`\\|X^\\top y\\|_\\infty / n`, the smallest ℓ1 weight whose solution is 0."""
        return float((self.X.T @ self.y).abs().max()) / self.n_samples

    def sample_weights(self, hyper: Tensor) -> None:
        return None

    def l2_weights(self, hyper: Tensor) -> Tensor:
        return torch.zeros(self.dim, 1, dtype=self.dtype, device=self.device)

    def inner_l1(self, hyper: Tensor) -> Tensor:
        return hyper[0]

    def check_hyper(self, hyper: Tensor) -> None:
        super().check_hyper(hyper)
        if hyper.shape != (1,) or float(hyper[0]) < 0:
            raise ValueError(
                f"the Lasso weight must be one number >= 0, got {hyper.tolist()}. "
                "Solvers project onto [0, inf) with project_hyper; pass a projected value."
            )

    def project_hyper(self, hyper: Tensor) -> Tensor:
        return hyper.clamp(min=0.0)
