r"""Iterative solvers of the linear system :math:`Hv = b` of implicit differentiation, H symmetric positive definite.

Both solvers see H only through products ``matvec(v)`` (Hessian-vector products), never as a matrix,
and work on tensors of any shape with the Euclidean inner product of their entries.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class LinearSolve:
    """A solution of :math:`Hv = b` with its relative residual :math:`\\|Hv - b\\| / \\|b\\|` and the products spent."""

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
    r"""Conjugate gradient (Hestenes & Stiefel, 1952) for :math:`Hv = b`, stopped at :math:`\|Hv - b\| \le \mathrm{tol}\,\|b\|`.

    Converges in at most dim(b) steps in exact arithmetic, and in
    :math:`O(\sqrt{\kappa}\log(1/\mathrm{tol}))` steps for condition number κ. A warm start ``x0``
    (the previous outer step's solution) saves most of them in bilevel loops.
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
        if curvature <= 0:  # H is not positive definite along p: stop with what we have.
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
    r"""Truncated Neumann series :math:`v = \eta\sum_{q=0}^{Q}(I - \eta H)^q b` for :math:`H^{-1}b`.

    Equivalent to Q + 1 gradient-descent steps on :math:`\tfrac12 v^\top Hv - b^\top v` from 0 with step
    η, so it converges for :math:`0 < \eta < 2/\lambda_{\max}(H)` at the rate
    :math:`1 - \eta\lambda_{\min}(H)`, slower than conjugate gradient but with no inner products, which
    is why stochastic solvers (stocBiO) use it. The residual is tracked by the same recursion:
    :math:`r_Q = (I - \eta H)^{Q+1} b` is the term the next step would add, times :math:`1/\eta`.
    """
    if not step_size > 0:
        raise ValueError(f"step_size must be > 0 (at most 1/L for convergence), got {step_size}.")
    norm_b = float(torch.linalg.vector_norm(b))
    if norm_b == 0.0:
        return LinearSolve(torch.zeros_like(b), 0.0, 0, True)
    term = b.clone()
    total = b.clone()
    n_iter = 0
    # Residual b - Hv equals (I - ηH)^{Q+1} b, the current term after its update.
    residual = 1.0
    while n_iter < max_iter:
        term = term - step_size * matvec(term)
        n_iter += 1
        residual = float(torch.linalg.vector_norm(term)) / norm_b
        if residual <= tol:
            break
        total.add_(term)
    return LinearSolve(step_size * total, residual, n_iter, residual <= tol)
