r"""A batch of finite-sum problems of the same size, solved side by side: the data of unrolled stochastic networks.

Instance b of a :class:`FiniteSumBatch` is the objective of :class:`~unrolled.problems.finite_sum.FiniteSum`
(same conventions: mean of weighted losses, ℓ2 term in the smooth part, intercept unpenalised) on
its own features :math:`X_b` (n, p) and targets :math:`y_b` (n,). Iterates have shape (B, dim, k). The
methods the update rules call (``rows``, ``derivatives``, ``l2_gradient``, ``prox``) carry the
instance dimension in front, so the ``*_direction`` functions of :mod:`unrolled.solvers` and
:func:`unrolled.solvers.stochastic.proximal_step` apply unchanged to a batch.

:func:`subset_instances` draws instances as random subsets of a dataset's samples, the family on
which the unrolled SVRG and SAGA networks are trained and tested.
"""

from __future__ import annotations


import torch
from torch import Tensor

from unrolled.problems.finite_sum import RegularisedLinearSum, check_regularisation, penalty_mask
from unrolled.problems.glm_losses import GLMLoss, make_loss


class FiniteSumBatch(RegularisedLinearSum):
    r"""B finite sums :math:`F_b(W) = \frac1n\sum_i \big(\psi(\tilde x_{bi}^\top W, y_{bi}) + \tfrac{\mathrm{reg\_l2}}2\|W_{\mathrm{pen}}\|^2\big) + \mathrm{reg}\|W_{\mathrm{pen}}\|_1`.

    Args:
        X: features of shape (B, n, p), dense.
        y: targets of shape (B, n) (see :class:`~unrolled.problems.finite_sum.FiniteSum` for each loss).
        loss: ``squared``, ``logistic`` or ``multinomial``.
        reg_l2, reg, fit_intercept, n_classes: as in :class:`~unrolled.problems.finite_sum.FiniteSum`.
    """

    def __init__(
        self,
        X: Tensor,
        y: Tensor,
        loss: str,
        *,
        reg_l2: float = 0.0,
        reg: float = 0.0,
        fit_intercept: bool = False,
        n_classes: int | None = None,
    ) -> None:
        if X.ndim != 3 or y.shape != X.shape[:2]:
            raise ValueError(f"X must have shape (B, n, p) and y (B, n); got X {tuple(X.shape)} and y {tuple(y.shape)}.")
        check_regularisation(reg_l2, reg)
        if not bool(torch.isfinite(X).all()):
            raise ValueError("X contains NaN or infinite entries; fill them first, for example with unrolled.problems.datasets.impute.")
        if loss == "multinomial" and n_classes is None:
            n_classes = int(y.max().item()) + 1
        self.loss: GLMLoss = make_loss(loss, n_classes)
        self.loss.check_targets(y)
        self.targets = y.to(X.dtype)
        self.n_instances, self.n_samples, self.n_features = X.shape
        self.n_outputs = self.loss.n_outputs(y)
        self.fit_intercept = fit_intercept
        self.reg_l2 = float(reg_l2)
        self.reg = float(reg)
        self.dtype = X.dtype
        self.device = X.device
        if fit_intercept:
            X = torch.cat([X, torch.ones_like(X[..., :1])], dim=-1)
        self.features = X
        self.dim = X.shape[-1]
        self.sample_weight = torch.ones(self.n_instances, self.n_samples, dtype=X.dtype, device=X.device)
        self.penalty_mask = penalty_mask(self.dim, fit_intercept, X.dtype, X.device)

    def zeros(self) -> Tensor:
        """Return the starting point W = 0 of shape (B, dim, k)."""
        return torch.zeros(self.n_instances, self.dim, self.n_outputs, dtype=self.dtype, device=self.device)

    def rows(self, index: Tensor) -> Tensor:
        """Return the feature rows of the samples ``index`` (B, b) of each instance, shape (B, b, dim)."""
        return self.features.gather(1, index[..., None].expand(-1, -1, self.dim))

    def derivatives(self, W: Tensor, rows: Tensor, index: Tensor) -> Tensor:
        """Return the loss derivatives of the drawn samples at W, shape (B, b, k)."""
        weights = self.sample_weight.gather(1, index)
        return weights[..., None] * self.loss.derivative(rows @ W, self.targets.gather(1, index))

    def objectives(self, W: Tensor) -> Tensor:
        """Return :math:`F_b(W_b)` for every instance, shape (B,), differentiable, in the dtype of W."""
        losses = self.loss.value(self.features.to(W.dtype) @ W, self.targets.to(W.dtype))
        penalised = W * self.penalty_mask.to(W.dtype)
        value = (self.sample_weight.to(W.dtype) * losses).mean(dim=1)
        return value + 0.5 * self.reg_l2 * (penalised**2).sum(dim=(1, 2)) + self.reg * penalised.abs().sum(dim=(1, 2))

    def sample_lipschitz(self) -> Tensor:
        r"""Return :math:`L_{bi} = \mathrm{curvature}\,\|\tilde x_{bi}\|^2`, shape (B, n)."""
        return self.loss.curvature * self.sample_weight * (self.features**2).sum(dim=-1)

    def lipschitz(self) -> Tensor:
        r"""Return each instance's L of the smooth gradient, :math:`\mathrm{curvature}\,\|\tilde X_b\|_2^2/n + \mathrm{reg\_l2}`, shape (B,)."""
        spectral = torch.linalg.matrix_norm(self.features.to(torch.float64), ord=2) ** 2
        return (self.loss.curvature * spectral / self.n_samples + self.reg_l2).to(self.dtype)

    def batch_smoothness(self, batch_size: int) -> Tensor:
        r"""Return :math:`L_b = L_{\max}/b + (1 - 1/b)L + \mathrm{reg\_l2}` of uniform draws, per instance, shape (B,).

        The same quantity as :func:`unrolled.solvers.stochastic.batch_smoothness`, for each instance.
        """
        data = self.lipschitz() - self.reg_l2
        return self.sample_lipschitz().amax(dim=1) / batch_size + (1.0 - 1.0 / batch_size) * data + self.reg_l2

    @torch.no_grad()
    def solve(self, max_iter: int = 100, tol: float = 1e-13) -> tuple[Tensor, Tensor]:
        r"""Return the minimisers (B, dim, k) and optimal values (B,) float64, by damped Newton steps.

        For smooth objectives (``reg = 0``) with a positive ``reg_l2`` (strictly convex). Each step
        is :math:`-H^{-1}\nabla F`, scaled by the best of :math:`2^{-j}`, j = 0..9, per instance,
        which keeps every instance's objective non-increasing. Stops once every gradient norm is below ``tol``.
        """
        if self.reg != 0.0 or self.reg_l2 <= 0.0:
            raise ValueError(
                f"solve needs a smooth, strictly convex objective (reg = 0, reg_l2 > 0); got reg={self.reg}, reg_l2={self.reg_l2}."
            )
        shape = (self.dim, self.n_outputs)
        features = self.features.to(torch.float64)
        targets = self.targets.to(torch.float64)
        mask = self.penalty_mask.to(torch.float64)

        def objective(w: Tensor, X: Tensor, y: Tensor) -> Tensor:
            W = w.view(shape)
            losses = self.loss.value(X @ W, y).mean()
            return losses + 0.5 * self.reg_l2 * ((W * mask) ** 2).sum()

        gradient = torch.func.vmap(torch.func.grad(objective))
        value = torch.func.vmap(objective)

        def hessian(w: Tensor, X: Tensor, y: Tensor) -> Tensor:
            curvature = self.loss.second_derivative(X @ w.view(-1, *shape), y)
            if curvature is None:
                return torch.func.vmap(torch.func.hessian(objective))(w, X, y)
            # One margin per sample: H = X^T diag(psi'') X / n + reg_l2 on the penalised rows, formed directly.
            data = X.transpose(1, 2) @ (curvature[..., None] * X) / self.n_samples
            return data + torch.diag_embed(self.reg_l2 * mask[:, 0]).expand_as(data)

        w = torch.zeros(self.n_instances, self.dim * self.n_outputs, dtype=torch.float64, device=self.device)
        scales = 2.0 ** -torch.arange(10, dtype=torch.float64, device=self.device)
        for _ in range(max_iter):
            g = gradient(w, features, targets)
            if float(g.norm(dim=1).max()) <= tol:
                break
            direction = torch.linalg.solve(hessian(w, features, targets), g[..., None])[..., 0]
            candidates = w[:, None, :] - scales[None, :, None] * direction[:, None, :]
            trial = value(
                candidates.flatten(0, 1),
                features.repeat_interleave(len(scales), 0),
                targets.repeat_interleave(len(scales), 0),
            ).view(self.n_instances, len(scales))
            w = candidates[torch.arange(self.n_instances), trial.argmin(dim=1)]
        return w.view(self.n_instances, *shape).to(self.dtype), value(w, features, targets)


def subset_instances(
    X: Tensor,
    y: Tensor,
    loss: str,
    *,
    n_instances: int,
    subset_size: int,
    generator: torch.Generator,
    **problem_kwargs,
) -> FiniteSumBatch:
    """Draw ``n_instances`` problems, each on ``subset_size`` samples of (X, y) chosen without replacement.

    Args:
        X: features (N, p) of the pool (one split of a dataset; draw test instances from a held-out split).
        y: targets (N,).
        loss: the loss of :class:`FiniteSumBatch`.
        n_instances: B.
        subset_size: n, at most N.
        generator: CPU generator; the same seed gives the same instances.
        problem_kwargs: ``reg_l2``, ``reg``, ``fit_intercept``, ``n_classes``.
    """
    if not 1 <= subset_size <= X.shape[0]:
        raise ValueError(f"subset_size must lie in [1, {X.shape[0]}] (the pool's samples), got {subset_size}.")
    if n_instances < 1:
        raise ValueError(f"n_instances must be >= 1, got {n_instances}.")
    keys = torch.rand(n_instances, X.shape[0], generator=generator)
    index = keys.argsort(dim=1)[:, :subset_size].to(X.device)
    return FiniteSumBatch(X[index], y[index], loss, **problem_kwargs)
