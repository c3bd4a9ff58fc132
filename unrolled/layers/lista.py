r"""LISTA and LISTA-SS: ISTA with learned matrices W (applied to y) and S (applied to x), untied by default."""

from __future__ import annotations

import torch
from torch import Tensor

from unrolled.layers.base import UnrolledISTA, per_layer, stacked
from unrolled.operators import lipschitz_constant
from unrolled.prox import prox_l1_support_selection


class LISTA(UnrolledISTA):
    r"""LISTA: :math:`x_{k+1} = \eta_{\theta_k}(W_k y + S_k x_k)` with learned :math:`W_k` (n × m), :math:`S_k` (n × n), :math:`\theta_k`.

    Initialised at ISTA: :math:`W_k = A^\top/L`, :math:`S_k = I - A^\top A/L`, :math:`\theta_k = \mathrm{reg}/L`,
    so that the untrained network computes K ISTA iterations. ``tied=True`` shares one W and one S
    across layers (thresholds stay per layer). Layer 1 starts from :math:`x_0 = 0`, so it has no S:
    untied networks store :math:`S_1, \dots, S_{K-1}`.

    Reference: Gregor, LeCun, "Learning fast approximations of sparse coding", ICML 2010.
    """

    def __init__(self, A: Tensor, n_layers: int, reg: float = 0.1, tied: bool = False, support_selection: bool = False) -> None:
        super().__init__(A, n_layers, support_selection)
        lipschitz = lipschitz_constant(A)
        eye = torch.eye(A.shape[1], dtype=A.dtype)
        self.tied = tied
        self.W = stacked(A.T / lipschitz, 1 if tied else n_layers)
        self.S = stacked(eye - A.T @ A / lipschitz, 1 if tied else n_layers - 1)
        self.threshold = per_layer(reg / lipschitz, n_layers, A.dtype)

    def per_layer_parameters(self) -> dict[str, int]:
        return {"threshold": 0} if self.tied else {"W": 0, "S": 1, "threshold": 0}

    def layer(self, k: int, x: Tensor, y: Tensor) -> Tensor:
        v = y @ self.W[0 if self.tied else k].T
        if k > 0:
            v = v + x @ self.S[0 if self.tied else k - 1].T
        return prox_l1_support_selection(v, self.threshold[k], self.bypass_fraction(k))


class LISTASS(LISTA):
    r"""LISTA-SS: :class:`LISTA` with support selection, the largest min(1.2·k, 13) % of entries bypassing the threshold in layer k.

    Reference: Chen, Liu, Wang, Yin, "Theoretical linear convergence of unfolded ISTA and its
    practical weights and thresholds", NeurIPS 2018, arXiv:1808.10038 (support selection, Sec. 3).
    """

    def __init__(self, A: Tensor, n_layers: int, reg: float = 0.1, tied: bool = False, support_selection: bool = True) -> None:
        super().__init__(A, n_layers, reg=reg, tied=tied, support_selection=support_selection)
