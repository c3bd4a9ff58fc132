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
