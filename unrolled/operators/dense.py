r"""Dense linear operators: input validation and the Lipschitz constant of the least-squares term.

For :math:`f(x) = \tfrac12\|Ax - y\|_2^2` the gradient :math:`A^\top(Ax - y)` is Lipschitz with
constant :math:`L = \|A\|_2^2 = \lambda_{\max}(A^\top A)`. Without the ½ the constant doubles.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# Power iteration approaches lambda_max from below, so the step 1/L it gives can be slightly too
# long; 1 % of head-room keeps ISTA monotone without slowing it measurably.
LIPSCHITZ_SAFETY_MARGIN = 1.01


def check_operator(A: Tensor) -> None:
    """Raise ``ValueError`` unless ``A`` is a finite 2-D tensor."""
    if not isinstance(A, Tensor):
        raise TypeError(f"A must be a torch.Tensor, got {type(A).__name__}.")
    if A.ndim != 2:
        raise ValueError(f"A must be a 2-D (m, n) tensor, got shape {tuple(A.shape)}.")
    if not torch.isfinite(A).all():
        raise ValueError("A contains NaN or Inf entries; expected a finite matrix.")


def check_measurements(y: Tensor, A: Tensor) -> None:
    """Raise ``ValueError`` unless ``y`` is finite with last dimension ``m = A.shape[0]``."""
    if not isinstance(y, Tensor):
        raise TypeError(f"y must be a torch.Tensor, got {type(y).__name__}.")
    if y.ndim == 0 or y.shape[-1] != A.shape[0]:
        raise ValueError(
            f"y must have shape (..., m) with m = A.shape[0] = {A.shape[0]}, got shape {tuple(y.shape)}."
        )
    if not torch.isfinite(y).all():
        raise ValueError("y contains NaN or Inf entries; expected finite measurements.")


def power_iteration(A: Tensor, max_iter: int = 1000, tol: float = 1e-9, seed: int = 0) -> float:
    r"""Estimate :math:`\lambda_{\max}(A^\top A) = \|A\|_2^2` by power iteration.

    Iterates on the smaller of the two Gram matrices (:math:`AA^\top` when m < n), which has the same
    non-zero eigenvalues, and stops when the Rayleigh quotient changes by less than ``tol`` relative.
    The estimate never exceeds the true value (up to rounding), so use :func:`lipschitz_constant`
    when a safe step size is needed.
    """
    check_operator(A)
    gram = A.T @ A if A.shape[1] <= A.shape[0] else A @ A.T
    generator = torch.Generator(device="cpu").manual_seed(seed)
    v = torch.randn(gram.shape[0], generator=generator, dtype=gram.dtype).to(gram.device)
    v = v / torch.linalg.vector_norm(v)
    estimate = 0.0
    for _ in range(max_iter):
        w = gram @ v
        new_estimate = float(v @ w)
        norm = torch.linalg.vector_norm(w)
        if norm == 0:
            return 0.0
        v = w / norm
        if abs(new_estimate - estimate) <= tol * abs(new_estimate):
            return new_estimate
        estimate = new_estimate
    return estimate


def lipschitz_constant(A: Tensor, margin: float = LIPSCHITZ_SAFETY_MARGIN) -> float:
    r"""Return a safe Lipschitz constant :math:`L \ge \|A\|_2^2` of :math:`\nabla \tfrac12\|Ax - y\|^2`.

    The power-iteration estimate is computed in float64 and multiplied by ``margin`` (1.01 by
    default) so that step sizes ``1/L`` stay inside the convergence range despite its under-estimate.
    """
    if margin < 1:
        raise ValueError(f"margin must be >= 1 so that L is not under-estimated, got {margin}.")
    estimate = power_iteration(A.detach().to(torch.float64))
    if not math.isfinite(estimate):
        raise ValueError(f"power iteration on A returned {estimate}; check A for overflow.")
    return estimate * margin
