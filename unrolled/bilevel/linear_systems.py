r"""Iterative solvers for the linear system :math:`Hv = b` of implicit differentiation, with H symmetric positive definite.

Both solvers access H only through products ``matvec(v)`` (Hessian-vector products), never as a matrix.
They work on tensors of any shape, with the Euclidean inner product of their entries.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class LinearSolve:
    r"""Approximate solution of :math:`Hv = b`, with its relative residual :math:`\|Hv - b\| / \|b\|`.

    ``n_iter`` is the number of iterations, each one Hessian-vector product. A conjugate-gradient warm
    start ``x0`` costs one more product, which ``n_iter`` does not count. ``converged`` is True when the
    residual reached the tolerance.
    """

    solution: Tensor
    residual: float
    n_iter: int
    converged: bool


def _dot(a: Tensor, b: Tensor) -> float:
    return float((a * b).sum())


@torch.no_grad()
def conjugate_gradient(
    matvec: Callable[[Tensor], Tensor],
    b: Tensor,
    *,
    tol: float = 1e-10,
    max_iter: int = 1000,
    x0: Tensor | None = None,
) -> LinearSolve:
    r"""Solve :math:`Hv = b` by conjugate gradient (Hestenes & Stiefel, 1952).

    Iteration stops at :math:`\|Hv - b\| \le \mathrm{tol}\,\|b\|`, after ``max_iter`` iterations, or
    when H is not positive definite along a search direction. The method converges in at most dim(b)
    steps in exact arithmetic, and in :math:`O(\sqrt{\kappa}\log(1/\mathrm{tol}))` steps for condition
    number κ. In bilevel loops, a warm start ``x0`` at the previous outer step's solution can save most
    of these steps.
    """
    norm_b = float(torch.linalg.vector_norm(b))
    x = torch.zeros_like(b) if x0 is None else x0.clone()
    if norm_b == 0.0:
        return LinearSolve(torch.zeros_like(b), 0.0, 0, True)
    r = b - matvec(x) if x0 is not None else b.clone()
    p = r.clone()
    rr = _dot(r, r)
    n_iter = 0
    while rr**0.5 > tol * norm_b and n_iter < max_iter:
        Hp = matvec(p)
        curvature = _dot(p, Hp)
        if curvature <= 0:  # H is not positive definite along p, so return the current iterate.
            break
        alpha = rr / curvature
        x.add_(p, alpha=alpha)
        r.sub_(Hp, alpha=alpha)
        rr_next = _dot(r, r)
        p.mul_(rr_next / rr).add_(r)
        rr = rr_next
        n_iter += 1
    residual = rr**0.5 / norm_b
    return LinearSolve(x, residual, n_iter, residual <= tol)


@torch.no_grad()
def neumann_series(
    matvec: Callable[[Tensor], Tensor],
    b: Tensor,
    *,
    step_size: float,
    tol: float = 1e-10,
    max_iter: int = 1000,
) -> LinearSolve:
    r"""Approximate :math:`H^{-1}b` by the truncated Neumann series :math:`v = \eta\sum_{q=0}^{Q}(I - \eta H)^q b`.

    The series equals Q + 1 gradient-descent steps with step η on :math:`\tfrac12 v^\top Hv - b^\top v`,
    started from 0. It therefore converges for :math:`0 < \eta < 2/\lambda_{\max}(H)`, at the rate
    :math:`1 - \eta\lambda_{\min}(H)`. That is slower than conjugate gradient, but the series needs no
    inner products, which is why stochastic solvers (stocBiO) use it.

    The same recursion tracks the residual. :math:`r_Q = (I - \eta H)^{Q+1} b` is the term that the
    next step would add to v, times :math:`1/\eta`.
    """
    if not step_size > 0:
        raise ValueError(
            f"step_size must be > 0, got {step_size}. Use at most 1/L, where L is the largest eigenvalue of H, "
            "so that the series converges."
        )
    norm_b = float(torch.linalg.vector_norm(b))
    if norm_b == 0.0:
        return LinearSolve(torch.zeros_like(b), 0.0, 0, True)
    term = b.clone()
    total = b.clone()
    n_iter = 0
    # The residual b - Hv of v = η Σ_{q≤Q} (I - ηH)^q b is (I - ηH)^{Q+1} b, the next term. The loop stops
    # before adding the term it measured, so the reported residual is that of the returned v.
    residual = 1.0
    while n_iter < max_iter:
        term = term - step_size * matvec(term)
        n_iter += 1
        residual = float(torch.linalg.vector_norm(term)) / norm_b
        if residual <= tol or n_iter == max_iter:
            break
        total.add_(term)
    return LinearSolve(step_size * total, residual, n_iter, residual <= tol)
