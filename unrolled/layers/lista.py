r"""Learned ISTA networks: K ISTA iterations unrolled into layers with learnable parameters.

Every network returns the estimate of every layer, stacked as (n_layers, batch, n), so that
per-layer metrics and per-layer losses need one forward pass. With their parameters at the
classical values (``step_size = 1/L``, thresholds ``reg/L``, W = A) LISTA, LISTA-CP and ALISTA
reproduce K iterations of :func:`unrolled.solvers.ista` exactly.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from unrolled.operators import check_measurements, check_operator, lipschitz_constant
from unrolled.prox import prox_l1_support_selection
from unrolled.solvers.ista import ista_step

# Support selection of LISTA-CPSS / ALISTA: layer k (from 1) lets the largest min(1.2·k, 13) percent
# of the entries bypass the threshold.
SUPPORT_PERCENT_PER_LAYER = 1.2
SUPPORT_PERCENT_MAX = 13.0


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


def support_bypass_fraction(layer: int, per_layer: float = SUPPORT_PERCENT_PER_LAYER, maximum: float = SUPPORT_PERCENT_MAX) -> float:
    """Fraction of entries that bypass the threshold in ``layer`` (counted from 1): min(per_layer·layer, maximum) percent."""
    return min(per_layer * layer, maximum) / 100.0


class UnrolledISTA(nn.Module):
    """Base of the learned-ISTA networks: stores A, starts from x = 0 and applies ``n_layers`` layers.

    Subclasses implement :meth:`layer`. ``support_selection`` turns on the bypass of
    :func:`support_bypass_fraction` in every layer.
    """

    def __init__(self, A: Tensor, n_layers: int, support_selection: bool = False) -> None:
        super().__init__()
        check_operator(A)
        if n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {n_layers}.")
        self.register_buffer("A", A.detach().clone())
        self.n_layers = n_layers
        self.support_selection = support_selection

    def bypass_fraction(self, k: int) -> float:
        return support_bypass_fraction(k + 1) if self.support_selection else 0.0

    def layer(self, k: int, x: Tensor, y: Tensor) -> Tensor:
        """Apply layer ``k`` (from 0) to the estimate ``x`` given measurements ``y``."""
        raise NotImplementedError

    def forward(self, y: Tensor, n_layers: int | None = None) -> Tensor:
        """Return the estimates of layers 1..``n_layers`` (all by default), shape (n_layers, *y.shape[:-1], n)."""
        check_measurements(y, self.A)
        n_layers = self.n_layers if n_layers is None else n_layers
        if not 1 <= n_layers <= self.n_layers:
            raise ValueError(f"n_layers must lie in [1, {self.n_layers}], got {n_layers}.")
        x = y.new_zeros(*y.shape[:-1], self.A.shape[1])
        estimates = []
        for k in range(n_layers):
            x = self.layer(k, x, y)
            estimates.append(x)
        return torch.stack(estimates)


def _per_layer(value: float, n_layers: int, dtype: torch.dtype) -> nn.Parameter:
    return nn.Parameter(torch.full((n_layers,), float(value), dtype=dtype))


class LISTA(UnrolledISTA):
    r"""LISTA: :math:`x_{k+1} = \eta_{\theta_k}(W_k y + S_k x_k)` with learned :math:`W_k` (n × m), :math:`S_k` (n × n), :math:`\theta_k`.

    Initialised at ISTA: :math:`W_k = A^\top/L`, :math:`S_k = I - A^\top A/L`, :math:`\theta_k = \mathrm{reg}/L`.
    ``tied=True`` shares one W and one S across layers (thresholds stay per layer). Layer 1 starts
    from :math:`x_0 = 0`, so it has no S: untied networks store :math:`S_1, \dots, S_{K-1}`.

    Reference: Gregor, LeCun, "Learning fast approximations of sparse coding", ICML 2010.
    """

    def __init__(self, A: Tensor, n_layers: int, reg: float = 0.1, tied: bool = False, support_selection: bool = False) -> None:
        super().__init__(A, n_layers, support_selection)
        lipschitz = lipschitz_constant(A)
        eye = torch.eye(A.shape[1], dtype=A.dtype)
        self.tied = tied
        self.W = nn.Parameter((A.T / lipschitz).detach().expand(1 if tied else n_layers, -1, -1).clone())
        self.S = nn.Parameter((eye - A.T @ A / lipschitz).detach().expand(1 if tied else n_layers - 1, -1, -1).clone())
        self.threshold = _per_layer(reg / lipschitz, n_layers, A.dtype)

    def layer(self, k: int, x: Tensor, y: Tensor) -> Tensor:
        v = y @ self.W[0 if self.tied else k].T
        if k > 0:
            v = v + x @ self.S[0 if self.tied else k - 1].T
        return prox_l1_support_selection(v, self.threshold[k], self.bypass_fraction(k))


class LISTACP(UnrolledISTA):
    r"""LISTA-CP (coupled weights): :math:`x_{k+1} = \eta_{\theta_k}(x_k - W_k^\top(Ax_k - y))`.

    :math:`W_k` (m × n) is learned per layer (one shared W with ``tied=True``) and initialised at
    :math:`A/L`; :math:`\theta_k` at :math:`\mathrm{reg}/L`. The coupling :math:`S_k = I - W_k^\top A`
    is the necessary condition for convergence proved in the reference.

    Reference: Chen, Liu, Wang, Yin, "Theoretical linear convergence of unfolded ISTA and its
    practical weights and thresholds", NeurIPS 2018, arXiv:1808.10038.
    """

    def __init__(self, A: Tensor, n_layers: int, reg: float = 0.1, tied: bool = False, support_selection: bool = False) -> None:
        super().__init__(A, n_layers, support_selection)
        lipschitz = lipschitz_constant(A)
        self.tied = tied
        self.W = nn.Parameter((A / lipschitz).detach().expand(1 if tied else n_layers, -1, -1).clone())
        self.threshold = _per_layer(reg / lipschitz, n_layers, A.dtype)

    def layer(self, k: int, x: Tensor, y: Tensor) -> Tensor:
        W = self.W[0 if self.tied else k]
        return ista_step(x, x @ self.A.T - y, W, 1.0, self.threshold[k], self.bypass_fraction(k))


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
        W = alista_weight(A) if W is None else W.detach().clone()
        if W.shape != A.shape:
            raise ValueError(f"W must have the shape of A, {tuple(A.shape)}, got {tuple(W.shape)}.")
        self.register_buffer("W", W)
        self.step_size = _per_layer(step_size, n_layers, A.dtype)
        self.threshold = _per_layer(step_size * reg, n_layers, A.dtype)

    def layer(self, k: int, x: Tensor, y: Tensor) -> Tensor:
        return ista_step(x, x @ self.A.T - y, self.W, self.step_size[k], self.threshold[k], self.bypass_fraction(k))
