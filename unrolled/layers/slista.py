r"""Step-LISTA (SLISTA): ISTA on the Lasso with only its step sizes learned, one per layer."""

from __future__ import annotations

from torch import Tensor

from unrolled.layers.base import UnrolledISTA, per_layer
from unrolled.operators import lipschitz_constant
from unrolled.solvers.ista import check_reg, ista_step


class SLISTA(UnrolledISTA):
    r"""Step-LISTA: :math:`x_{k+1} = \eta_{\alpha_k \lambda}(x_k - \alpha_k A^\top(Ax_k - y))` with learned :math:`\alpha_k`.

    Only the K step sizes :math:`\alpha_k` (initialised at 1/L) are learned; the Lasso
    regularisation :math:`\lambda` = ``reg`` is fixed, so every layer is an ISTA step on the same
    Lasso problem and the network can be trained without ground truth, on the Lasso objective
    (``loss: lasso`` with the same ``reg``). The reference shows that the learned
    :math:`\alpha_k` grow towards :math:`1/L_S`, the inverse Lipschitz constant of A restricted to
    the support of the solution, which is why larger steps than 1/L are safe in late layers.

    Reference: Ablin, Moreau, Massias, Gramfort, "Learning step sizes for unfolded sparse coding",
    NeurIPS 2019, arXiv:1905.11071.
    """

    def __init__(self, A: Tensor, n_layers: int, reg: float = 0.1) -> None:
        super().__init__(A, n_layers, support_selection=False)
        check_reg(reg)
        self.reg = float(reg)
        self.step_size = per_layer(1.0 / lipschitz_constant(A), n_layers, A.dtype)

    def layer(self, k: int, x: Tensor, y: Tensor) -> Tensor:
        step_size = self.step_size[k]
        return ista_step(x, x @ self.A.T - y, self.A, step_size, step_size * self.reg)
