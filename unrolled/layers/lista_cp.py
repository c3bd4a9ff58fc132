r"""LISTA-CP and LISTA-CPSS: ISTA with a learned matrix per layer in place of A, coupled as :math:`S_k = I - W_k^\top A`."""

from __future__ import annotations

from torch import Tensor

from unrolled.layers.base import UnrolledISTA, per_layer, stacked
from unrolled.operators import lipschitz_constant
from unrolled.solvers.ista import ista_step


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
        self.W = stacked(A / lipschitz, 1 if tied else n_layers)
        self.threshold = per_layer(reg / lipschitz, n_layers, A.dtype)

    def per_layer_parameters(self) -> dict[str, int]:
        return {"threshold": 0} if self.tied else {"W": 0, "threshold": 0}

    def layer(self, k: int, x: Tensor, y: Tensor) -> Tensor:
        W = self.W[0 if self.tied else k]
        return ista_step(x, x @ self.A.T - y, W, 1.0, self.threshold[k], self.bypass_fraction(k))


class LISTACPSS(LISTACP):
    r"""LISTA-CPSS: :class:`LISTACP` with support selection, the largest min(1.2·k, 13) % of entries bypassing the threshold in layer k.

    Reference: Chen, Liu, Wang, Yin, NeurIPS 2018, arXiv:1808.10038 (Sec. 3); the 1.2 % per layer
    up to 13 % schedule is the one of the authors' code and of Open-L2O.
    """

    def __init__(self, A: Tensor, n_layers: int, reg: float = 0.1, tied: bool = False, support_selection: bool = True) -> None:
        super().__init__(A, n_layers, reg=reg, tied=tied, support_selection=support_selection)
