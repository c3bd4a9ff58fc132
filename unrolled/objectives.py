r"""Objectives, evaluated per sample in float64."""

from __future__ import annotations

import torch
from torch import Tensor


def lasso_objective(x: Tensor, y: Tensor, A: Tensor, reg: Tensor | float, residual: Tensor | None = None) -> Tensor:
    r"""Per-sample Lasso objective :math:`\tfrac12\|Ax - y\|_2^2 + \mathrm{reg}\,\|x\|_1` in float64.

    ``residual = Ax − y`` may be passed when the caller has it already, to save a matrix product.
    ``reg`` broadcasts against the batch shape of ``x`` with a trailing singleton, like the solvers'.
    Returns a tensor of shape ``x.shape[:-1]``.
    """
    if residual is None:
        residual = x @ A.T - y
    data_term = 0.5 * residual.to(torch.float64).abs().square().sum(-1)
    reg = torch.as_tensor(reg, dtype=torch.float64, device=x.device)
    return data_term + (reg * x.to(torch.float64).abs()).sum(-1)
