r"""Batched conjugate gradient for Hermitian positive-definite linear maps.

Solves :math:`Mx = b` for many right-hand sides at once, where ``apply`` computes :math:`Mx` for a
batch. Each sample has its own step sizes, so the samples are independent problems that share only
the number of iterations. With :math:`r_0 = b - Mx_0`, :math:`p_0 = r_0`:

.. math::
    \alpha_k = \frac{r_k^H r_k}{p_k^H M p_k},\quad
    x_{k+1} = x_k + \alpha_k p_k,\quad
    r_{k+1} = r_k - \alpha_k M p_k,\quad
    \beta_k = \frac{r_{k+1}^H r_{k+1}}{r_k^H r_k},\quad
    p_{k+1} = r_{k+1} + \beta_k p_k .

In exact arithmetic it solves an n × n system in at most n iterations. The loop is made of plain
torch operations, so autograd differentiates through a fixed number of iterations, as an unrolled
network that solves a linear system in every layer needs.

Reference: Hestenes, Stiefel, "Methods of conjugate gradients for solving linear systems",
J. Res. Nat. Bur. Standards 49, 1952.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def conjugate_gradient(
    apply: Callable[[Tensor], Tensor],
    rhs: Tensor,
    x0: Tensor | None = None,
    max_iter: int = 50,
    tol: float = 1e-6,
    vector_dims: int = 1,
) -> Tensor:
    r"""Solve :math:`Mx = b` by conjugate gradient, batched over the leading dimensions of ``rhs``.

    A sample stops moving once its residual satisfies :math:`\|r_k\| \le \mathrm{tol}\,\|b\|`: its
    step sizes are set to 0, so later iterations leave it unchanged. The loop ends after
    ``max_iter`` iterations, or earlier once every sample has stopped. With ``tol = 0`` it always
    runs ``max_iter`` iterations without reading any value back from the device, which is what a
    differentiable layer with a fixed cost wants. A
    sample whose residual is exactly 0 (a zero right-hand side, or an exact start) gets zero step
    sizes, so neither the values nor the gradients contain NaN.

    Args:
        apply: the map :math:`x \mapsto Mx` on tensors of the shape of ``rhs``. It must be linear,
            Hermitian and positive definite in the inner product :math:`\operatorname{Re}\sum_i \bar u_i v_i`
            over the last ``vector_dims`` dimensions, and must act on each sample separately.
        rhs: :math:`b`, real or complex, shape (..., *vector_shape).
        x0: starting point of the shape of ``rhs``; zeros by default. A warm start from a nearby
            solution (the previous iterate of an outer solver) saves iterations.
        max_iter: maximum number of iterations, >= 0.
        tol: relative residual at which a sample stops, >= 0.
        vector_dims: number of trailing dimensions that form one vector: 1 for vectors (..., n),
            2 for images (..., H, W).

    Returns:
        The approximate solution, of the shape and dtype of ``rhs``.

    Raises:
        ValueError: ``max_iter`` or ``tol`` is negative, ``vector_dims`` is out of range, or ``x0``
            does not have the shape of ``rhs``.
    """
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 0:
        raise ValueError(f"max_iter must be an integer >= 0, got {max_iter!r}.")
    if not tol >= 0:
        raise ValueError(f"tol must be >= 0, got {tol}.")
    if not 1 <= vector_dims <= rhs.ndim:
        raise ValueError(f"vector_dims must lie in [1, rhs.ndim = {rhs.ndim}], got {vector_dims}.")
    if x0 is not None and x0.shape != rhs.shape:
        raise ValueError(f"x0 must have the shape of rhs {tuple(rhs.shape)}, got {tuple(x0.shape)}.")

    dims = tuple(range(rhs.ndim - vector_dims, rhs.ndim))
    if x0 is None:
        x = torch.zeros_like(rhs)
        residual = rhs
    else:
        x = x0
        residual = rhs - apply(x0)
    direction = residual
    residual_norm2 = _inner(residual, residual, dims)
    stop_norm2 = tol**2 * _inner(rhs, rhs, dims).detach()

    for _ in range(max_iter):
        active = residual_norm2.detach() > stop_norm2
        # The test costs a device synchronisation, which a fixed-cost layer (tol = 0) skips.
        if tol > 0 and not bool(active.any()):
            break
        image = apply(direction)
        curvature = _inner(direction, image, dims)
        alpha = _safe_ratio(residual_norm2, curvature, active)
        x = x + alpha * direction
        residual = residual - alpha * image

        new_norm2 = _inner(residual, residual, dims)
        beta = _safe_ratio(new_norm2, residual_norm2, active)
        direction = residual + beta * direction
        residual_norm2 = new_norm2
    return x


def _inner(u: Tensor, v: Tensor, dims: tuple[int, ...]) -> Tensor:
    """Return :math:`\\operatorname{Re}\\sum \\bar u v` over ``dims``, kept as size-1 dimensions so it broadcasts."""
    if torch.is_complex(u):
        return (u.conj() * v).real.sum(dim=dims, keepdim=True)
    return (u * v).sum(dim=dims, keepdim=True)


def _safe_ratio(numerator: Tensor, denominator: Tensor, active: Tensor) -> Tensor:
    """Return ``numerator / denominator`` where ``active`` and the denominator is positive, 0 elsewhere.

    The division runs on a denominator of 1 where the result is 0, so that its gradient is 0 and
    not NaN there.
    """
    valid = active & (denominator.detach() > 0)
    safe_denominator = torch.where(valid, denominator, torch.ones_like(denominator))
    return torch.where(valid, numerator / safe_denominator, torch.zeros_like(numerator))
