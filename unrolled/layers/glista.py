r"""GLISTA: LISTA-CPSS with a gain gate before each update and an overshoot gate after it."""

from __future__ import annotations

from torch import Tensor

from unrolled.layers.base import per_layer
from unrolled.layers.lista_cp import LISTACP
from unrolled.solvers.ista import ista_step

# Denominator offsets of the inverse-proportional gain and overshoot gates, as in the authors' code
# (GLISTA_cp.py). They keep both gates finite at x = 0.
GAIN_EPSILON = 1e-3
OVERSHOOT_EPSILON = 0.1


class GLISTA(LISTACP):
    r"""GLISTA (gated LISTA): LISTA-CPSS whose layers are wrapped by a gain gate and an overshoot gate.

    Layer k (from 0) maps :math:`x_k` to :math:`x_{k+1}`:

    .. math::
        g_k &= 1 + \frac{\mu_k}{|\nu_k|\,|x_k| + \epsilon_g}, \qquad \bar x_k = g_k \odot x_k, \\
        \tilde x_{k+1} &= \eta^{ss}_{\theta_k}\big(\bar x_k - W_k^\top(A\bar x_k - y)\big), \\
        o_k &= 1 + \frac{a_k\,\theta_k}{|\tilde x_{k+1} - x_k| + \epsilon_o}, \qquad
        x_{k+1} = o_k \odot \tilde x_{k+1} + (1 - o_k) \odot x_k,

    elementwise, with :math:`\epsilon_g = 10^{-3}` and :math:`\epsilon_o = 0.1`. The gain gate
    :math:`g_k` enlarges the entries of :math:`x_k` before the update, to make up for the shrinkage of
    the previous threshold: for :math:`|x| \gg \epsilon_g/|\nu_k|` it adds about :math:`\mu_k/|\nu_k|`
    to :math:`|x|`. The overshoot gate :math:`o_k` extrapolates past the new estimate, by at most
    :math:`a_k\theta_k` per entry, to make up for too short a step. :math:`\eta^{ss}` is the support
    selection of LISTA-CPSS (on by default).

    Learned per layer: :math:`W_k` (m × n, one shared W with ``tied=True``), :math:`\theta_k`, the
    overshoot scale :math:`a_k` and, from the second layer on, the gain scale :math:`\mu_k` and
    the gain decay :math:`\nu_k`. The first layer has no gain gate because :math:`x_0 = 0`, so
    ``gain_scale`` and ``gain_decay`` store layers 1..K−1. :math:`|\nu_k|` keeps the gain's
    denominator at least :math:`\epsilon_g` whatever the sign training gives :math:`\nu_k`.

    Initialisation: :math:`W_k = A/L` and :math:`\theta_k = \mathrm{reg}/L` as in LISTA-CP,
    :math:`\mu_k` = ``gain_scale``, :math:`\nu_k = 1`, :math:`a_k` = ``overshoot_scale``. With
    ``gain_scale=0`` and ``overshoot_scale=0`` both gates are the identity and the network is
    :class:`unrolled.layers.LISTACPSS` exactly, but then :math:`\nu_k` gets no gradient. The
    defaults are therefore small non-zero gates: a gain that adds at most 0.001 to each entry and
    an overshoot of at most :math:`\theta_k` per entry. Untrained, on the noiseless 250 × 500
    reference problem, they change the 16-layer NMSE of LISTA-CPSS by less than 1 dB. The gates
    add 3K − 2 learned numbers to LISTA-CPSS.

    Gate functions: the authors' code (github.com/wukailun/GLISTA, ``GLISTA_cp.py``) offers
    piecewise-linear, exponential, sigmoid and inverse-proportional gain functions, and an
    inverse-proportional or a sigmoid overshoot gate. The sigmoid gate learns an n × n and an n × m
    matrix, so this class takes the inverse-proportional gain (``reweight_inverse``) and overshoot
    (``inv``), which add scalars only, as that code writes them, with three changes. The code's factor 0.2 in the gain is folded into :math:`\mu_k`.
    The code writes the overshoot as :math:`1 - a_k(\cdot)` and here the sign sits in :math:`a_k`.
    The code uses the previous layer's threshold with the entries that bypassed it masked out, and
    here the overshoot uses :math:`\theta_k` on every entry.

    NOTE: these formulas are checked against the authors' code only, not against the equations of
    the paper.

    Reference: Wu, Guo, Li, Zhang, "Sparse coding with gated learned ISTA", ICLR 2020,
    openreview.net/forum?id=BygPO2VKPH.
    """

    def __init__(
        self,
        A: Tensor,
        n_layers: int,
        reg: float = 0.1,
        tied: bool = False,
        support_selection: bool = True,
        gain_scale: float = 1e-3,
        overshoot_scale: float = 1.0,
    ) -> None:
        super().__init__(A, n_layers, reg=reg, tied=tied, support_selection=support_selection)
        self.gain_scale = per_layer(gain_scale, n_layers - 1, A.dtype)
        self.gain_decay = per_layer(1.0, n_layers - 1, A.dtype)
        self.overshoot_scale = per_layer(overshoot_scale, n_layers, A.dtype)

    def per_layer_parameters(self) -> dict[str, int]:
        return {**super().per_layer_parameters(), "gain_scale": 1, "gain_decay": 1, "overshoot_scale": 0}

    def gain(self, k: int, x: Tensor) -> Tensor:
        """Return the gain gate :math:`g_k(x)` of layer ``k`` >= 1, elementwise."""
        return 1.0 + self.gain_scale[k - 1] / (self.gain_decay[k - 1].abs() * x.abs() + GAIN_EPSILON)

    def overshoot(self, k: int, x: Tensor, x_new: Tensor) -> Tensor:
        """Return the overshoot gate :math:`o_k` between the input ``x`` and the update ``x_new`` of layer ``k``, elementwise."""
        return 1.0 + self.overshoot_scale[k] * self.threshold[k] / ((x_new - x).abs() + OVERSHOOT_EPSILON)

    def layer(self, k: int, x: Tensor, y: Tensor) -> Tensor:
        # x_0 = 0, so the first layer has nothing to gain.
        gained = x if k == 0 else self.gain(k, x) * x
        W = self.W[0 if self.tied else k]
        x_new = ista_step(gained, gained @ self.A.T - y, W, 1.0, self.threshold[k], self.bypass_fraction(k))

        # o·x_new + (1 − o)·x rather than x + o·(x_new − x): with o = 1 it returns x_new exactly.
        overshoot = self.overshoot(k, x, x_new)
        return overshoot * x_new + (1.0 - overshoot) * x
