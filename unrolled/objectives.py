r"""Objectives, evaluated per sample: in float64 for reports and traces, or at the input's precision as a training loss."""

from __future__ import annotations

import torch
from torch import Tensor


def lasso_objective(
    x: Tensor,
    y: Tensor,
    A: Tensor,
    reg: Tensor | float,
    residual: Tensor | None = None,
    dtype: torch.dtype | None = torch.float64,
) -> Tensor:
    r"""Per-sample Lasso objective :math:`\tfrac12\|Ax - y\|_2^2 + \mathrm{reg}\,\|x\|_1`.

    ``residual = Ax − y`` may be passed when the caller has it already, to save a matrix product.
    ``reg`` broadcasts against the batch shape of ``x`` with a trailing singleton, like the solvers'.
    The sums run in ``dtype``, float64 by default; ``dtype=None`` keeps the dtype of ``x``, which
    makes the objective a training loss at the network's precision. Both forms are differentiable.
    Returns a tensor of shape ``x.shape[:-1]``.
    """
    if residual is None:
        residual = x @ A.T - y
    if dtype is not None:
        residual, x = residual.to(dtype), x.to(dtype)
    data_term = 0.5 * residual.abs().square().sum(-1)
    magnitude = x.abs()
    reg = torch.as_tensor(reg, dtype=magnitude.dtype, device=x.device)
    return data_term + (reg * magnitude).sum(-1)


@torch.no_grad()
def lasso_duality_gap(
    x: Tensor,
    y: Tensor,
    A: Tensor,
    reg: Tensor | float,
    residual: Tensor | None = None,
    dtype: torch.dtype | None = torch.float64,
) -> Tensor:
    r"""Per-sample duality gap of the Lasso at ``x``, with the dual point obtained by rescaling the residual.

    Primal and dual (Fercoq, Gramfort, Salmon, "Mind the duality gap: safer rules for the Lasso",
    ICML 2015, section 2):

    .. math::
        P(x) = \tfrac12\|Ax - y\|^2 + \mathrm{reg}\,\|x\|_1, \qquad
        D(\theta) = \tfrac12\|y\|^2 - \tfrac12\|y - \theta\|^2
        \quad\text{subject to}\quad \|A^\top\theta\|_\infty \le \mathrm{reg}.

    Weak duality gives :math:`P(x) - P^* \le P(x) - D(\theta)` for every feasible :math:`\theta`, and
    at the solution :math:`\theta^* = y - Ax^*` closes the gap. From :math:`\rho = y - Ax` and
    :math:`c = A^\top\rho` the feasible point is :math:`\theta = s\rho` with
    :math:`s = \min(1, \mathrm{reg}/\|c\|_\infty)`, the point of scikit-learn's coordinate descent.
    Substituting :math:`y = Ax + \rho` into :math:`P(x) - D(s\rho)` gives

    .. math:: \mathrm{gap} = \tfrac12(1 - s)^2\|\rho\|^2 + \mathrm{reg}\,\|x\|_1 - s\,x^\top c,

    whose two parts are each >= 0 (because :math:`s\|c\|_\infty \le \mathrm{reg}`). This form cancels
    terms of the size of :math:`\mathrm{reg}\|x\|_1` only, where :math:`P - D` cancels terms of the
    size of :math:`\tfrac12\|y\|^2`, so its rounding error is about :math:`\epsilon\,\mathrm{reg}\|x\|_1`.
    The gap bounds the suboptimality :math:`P(x) - P^*`. scikit-learn's ``Lasso.dual_gap_`` is
    this value divided by the number of rows of A, because scikit-learn minimises the objective
    divided by that number (with ``alpha = reg / m``).

    ``reg`` may be a float, one value per sample (shape (..., 1)) or one weight per entry
    (shape (..., n), the weighted ℓ1 norm, whose dual constraint is :math:`|c_j| \le \mathrm{reg}_j`).
    With ``reg = 0`` the dual point is 0 unless :math:`c = 0`, so the gap is then :math:`P(x)`.
    ``residual = Ax − y`` may be passed when the caller has it, as for :func:`lasso_objective`. The
    product :math:`A^\top\rho` is always computed, at the dtype of the inputs; the sums run in
    ``dtype`` (float64 by default, ``None`` keeps the input dtype). Real inputs only. It is a
    stopping and reporting criterion, computed without autograd. Returns a tensor of shape
    ``x.shape[:-1]``.
    """
    if residual is None:
        residual = x @ A.T - y
    # The product with the sign of the residual: minus_c = A^T (Ax - y) = -c.
    minus_c = residual @ A
    if dtype is not None:
        residual, x, minus_c = residual.to(dtype), x.to(dtype), minus_c.to(dtype)
    reg = torch.as_tensor(reg, dtype=x.dtype, device=x.device)

    if reg.ndim == 0 or reg.shape[-1] == 1:
        # One reg per sample: the common case, without temporaries of the size of x beyond two.
        reg = reg if reg.ndim == 0 else reg.squeeze(-1)
        dual_norm = minus_c.abs().amax(-1)
        scale = torch.where(dual_norm > reg, reg / dual_norm.clamp_min(torch.finfo(x.dtype).tiny), 1.0)
        l1_term = reg * x.abs().sum(-1)
    else:
        # One weight per entry: s = 1 / max(1, max_j |c_j| / reg_j), where c_j / 0 = inf gives s = 0.
        magnitude = minus_c.abs()
        violation = torch.where(magnitude > reg, magnitude / reg, torch.zeros_like(magnitude))
        scale = 1.0 / violation.amax(-1).clamp_min(1.0)
        l1_term = (reg * x.abs()).sum(-1)
    residual_term = 0.5 * (1.0 - scale).square() * torch.linalg.vector_norm(residual, dim=-1).square()
    # -s x^T c = s x^T minus_c, and minus_c is not needed any more, so the product overwrites it.
    return residual_term + l1_term + scale * minus_c.mul_(x).sum(-1)
