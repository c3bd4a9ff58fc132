r"""LFISTA: FISTA with a learned matrix, threshold and momentum per layer, in the coupled form of LISTA-CP."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from unrolled.layers.lista_cp import LISTACP
from unrolled.solvers.ista import ista_step


def fista_momentum(n_layers: int) -> list[float]:
    r"""Return the FISTA momentum :math:`(t_k - 1)/t_{k+1}` of iterations 1..``n_layers``, with :math:`t_1 = 1`.

    The first entry is 0, because :math:`t_1 = 1`. The recursion and its floating-point operations
    are those of :func:`unrolled.solvers.fista`, so that an unrolled network built from these
    values reproduces the solver to rounding.
    """
    momentum = []
    t = 1.0
    for _ in range(n_layers):
        t_next = (1.0 + math.sqrt(1.0 + 4.0 * t * t)) / 2.0
        momentum.append((t - 1.0) / t_next)
        t = t_next
    return momentum


class LFISTA(LISTACP):
    r"""LFISTA (learned FISTA), coupled form: a LISTA-CP update taken at a learned momentum point.

    .. math::
        z_k = x_k + \beta_k (x_k - x_{k-1}),\qquad
        x_{k+1} = \eta_{\theta_k}\big(z_k - W_k^\top(A z_k - y)\big),

    for layers :math:`k = 0, \dots, K-1` from :math:`x_0 = x_{-1} = 0`. Learned per layer:
    :math:`W_k` (m × n, one shared W with ``tied=True``), the threshold :math:`\theta_k` and the
    momentum :math:`\beta_k`. The first layer has no momentum, because :math:`x_0 - x_{-1} = 0`, so
    ``momentum`` stores :math:`\beta_1, \dots, \beta_{K-1}`.

    Initialisation is FISTA with step 1/L: :math:`W_k = A/L`, :math:`\theta_k = \mathrm{reg}/L` and
    :math:`\beta_k = (t_{k+1} - 1)/t_{k+2}` with :math:`t_1 = 1` and
    :math:`t_{j+1} = (1 + \sqrt{1 + 4t_j^2})/2` (:func:`fista_momentum`). The untrained network
    therefore returns the iterates of :func:`unrolled.solvers.fista` after 1..K iterations.
    ``support_selection`` adds the bypass of :func:`unrolled.layers.base.support_bypass_fraction`.

    Parameterisation: the LFISTA of the Open-L2O benchmark (github.com/VITA-Group/Open-L2O, file
    ``Model_Base_L2O/models/lfista.py``) uses the untied LISTA form
    :math:`x_{k+1} = \eta_{\theta_k}(W^g_k x_k + W^m_k x_{k-1} + W^e y)`. It learns two n × n
    matrices per layer, initialised at :math:`(1 + \beta_k)(I - A^\top A/L)` and
    :math:`-\beta_k(I - A^\top A/L)`, and one n × m matrix :math:`W^e = A^\top/L` shared by all
    layers. At initialisation both forms compute the same FISTA iterates. The coupled form here
    stores one m × n matrix per layer instead of two n × n ones, a quarter of the weights for a
    250 × 500 operator. It also keeps the structure :math:`S_k = I - W_k^\top A`, which LISTA-CP
    proves necessary for convergence.

    References:
        Beck, Teboulle, "A fast iterative shrinkage-thresholding algorithm for linear inverse
        problems", SIAM J. Imaging Sci., 2009 (FISTA).
        Chen, Liu, Wang, Yin, "Theoretical linear convergence of unfolded ISTA and its practical
        weights and thresholds", NeurIPS 2018, arXiv:1808.10038 (coupled weights).
    """

    def __init__(self, A: Tensor, n_layers: int, reg: float = 0.1, tied: bool = False, support_selection: bool = False) -> None:
        super().__init__(A, n_layers, reg=reg, tied=tied, support_selection=support_selection)
        self.momentum = torch.nn.Parameter(torch.tensor(fista_momentum(n_layers)[1:], dtype=A.dtype))

    def per_layer_parameters(self) -> dict[str, int]:
        return {**super().per_layer_parameters(), "momentum": 1}

    def initial_state(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """Return the state before the first layer: :math:`(x_0, x_{-1}) = (0, 0)`."""
        x = super().initial_state(y)
        return x, x

    def estimate(self, state: tuple[Tensor, Tensor]) -> Tensor:
        return state[0]

    def layer(self, k: int, state: tuple[Tensor, Tensor], y: Tensor) -> tuple[Tensor, Tensor]:
        x, x_prev = state
        # FISTA's first iteration has momentum 0, so layer 0 steps from z = x.
        z = x if k == 0 else x + self.momentum[k - 1] * (x - x_prev)
        W = self.W[0 if self.tied else k]
        x_next = ista_step(z, z @ self.A.T - y, W, 1.0, self.threshold[k], self.bypass_fraction(k))
        return x_next, x
