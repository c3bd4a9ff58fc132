r"""ALISTA and TiLISTA: one matrix W for all layers, with a step size and a threshold learned per layer."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from unrolled.layers.base import UnrolledISTA, per_layer
from unrolled.operators import check_operator
from unrolled.solvers.ista import ista_step


def alista_weight(A: Tensor) -> Tensor:
    r"""Analytic ALISTA weight :math:`w_i = (AA^\top)^{-1}a_i / (a_i^\top (AA^\top)^{-1} a_i)`.

    Column i minimises :math:`\|W^\top A\|_F` under :math:`w_i^\top a_i = 1`, so
    :math:`\operatorname{diag}(W^\top A) = 1` exactly. Needs ``A`` of full row rank (m ≤ n).
    Computed in float64 and returned in ``A``'s dtype.
    """
    check_operator(A)
    A64 = A.to(torch.float64)
    if A64.shape[0] > A64.shape[1]:
        raise ValueError(f"alista_weight needs m <= n (a wide A), got shape {tuple(A.shape)}.")
    solved = torch.linalg.solve(A64 @ A64.T, A64)
    # solve() returns a column-major result; contiguous() keeps a saved and reloaded W bit-identical.
    return (solved / (A64 * solved).sum(0, keepdim=True)).to(A.dtype).contiguous()


class ALISTA(UnrolledISTA):
    r"""ALISTA: :math:`x_{k+1} = \eta^{ss}_{\theta_k}(x_k - \gamma_k W^\top(Ax_k - y))` with W computed from A.

    Only a step size :math:`\gamma_k` and a threshold :math:`\theta_k` are learned per layer (2K
    parameters). W is :func:`alista_weight` unless given; the support selection of
    :func:`support_bypass_fraction` is on by default. ``step_size`` and ``reg`` set the initial
    :math:`\gamma_k` and :math:`\theta_k = \gamma_k \cdot \mathrm{reg}`.

    Reference: Liu, Chen, Wang, Yin, "ALISTA: Analytic weights are as good as learned weights in
    LISTA", ICLR 2019, arXiv:1812.03219.
    """

    def __init__(
        self,
        A: Tensor,
        n_layers: int,
        reg: float = 0.1,
        step_size: float = 1.0,
        support_selection: bool = True,
        W: Tensor | None = None,
    ) -> None:
        super().__init__(A, n_layers, support_selection)
        analytic = W is None
        W = alista_weight(A) if analytic else W.detach().clone()
        if W.shape != A.shape:
            raise ValueError(f"W must have the shape of A, {tuple(A.shape)}, got {tuple(W.shape)}.")
        # The analytic W is recomputed from A, so the weights file need not store it. A given W is
        # stored, and a network built with the analytic W adopts a stored W when it loads one.
        self.register_buffer("W", W, persistent=not analytic)
        self.step_size = per_layer(step_size, n_layers, A.dtype)
        self.threshold = per_layer(step_size * reg, n_layers, A.dtype)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        # A weights file contains W only when it is not the analytic weight of A, so a stored W wins.
        if prefix + "W" in state_dict and "W" in self._non_persistent_buffers_set:
            self._non_persistent_buffers_set.discard("W")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)

    def layer(self, k: int, x: Tensor, y: Tensor) -> Tensor:
        return ista_step(x, x @ self.A.T - y, self.W, self.step_size[k], self.threshold[k], self.bypass_fraction(k))


def mutual_coherence(A: Tensor, W: Tensor | None = None) -> float:
    r"""Largest off-diagonal :math:`|w_i^\top a_j|` over unit-norm columns; with ``W = None`` the mutual coherence of A.

    With W given, its columns are used as they are (the generalised coherence of ALISTA, for a W
    with :math:`w_i^\top a_i = 1`); A's columns are normalised in both cases. Computed in float64.
    """
    A64 = A.to(torch.float64)
    A64 = A64 / A64.norm(dim=0, keepdim=True)
    W64 = A64 if W is None else W.to(torch.float64)
    gram = (W64.T @ A64).abs()
    gram.fill_diagonal_(0.0)
    return gram.max().item()


class TiLISTA(ALISTA):
    r"""TiLISTA (tied LISTA): :class:`ALISTA` whose single matrix W is learned too.

    :math:`x_{k+1} = \eta^{ss}_{\theta_k}(x_k - \gamma_k W^\top(Ax_k - y))` with one learned W (m × n)
    shared by all layers, a learned :math:`\gamma_k` and :math:`\theta_k` per layer, and support
    selection. W starts at the analytic weight of :func:`alista_weight`, so training starts
    where ALISTA starts.

    Reference: Liu, Chen, Wang, Yin, "ALISTA: Analytic weights are as good as learned weights in
    LISTA", ICLR 2019, arXiv:1812.03219 (Sec. 3, tied LISTA).
    """

    def __init__(
        self,
        A: Tensor,
        n_layers: int,
        reg: float = 0.1,
        step_size: float = 1.0,
        support_selection: bool = True,
        W: Tensor | None = None,
    ) -> None:
        super().__init__(A, n_layers, reg=reg, step_size=step_size, support_selection=support_selection, W=W)
        W = self.W
        del self.W
        self.W = nn.Parameter(W)
