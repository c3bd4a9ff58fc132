r"""LAMP: learned approximate message passing, AMP with a learned matrix and threshold per layer and its Onsager correction."""

from __future__ import annotations

import math

from torch import Tensor

from unrolled.layers.base import UnrolledISTA, per_layer, stacked
from unrolled.solvers.ista import ista_step

# AMP's threshold multiplier in the authors' comparison script (ista_fista_amp.m of
# github.com/mborgerding/onsager_deep_learning). With it, AMP reaches -46 dB after 30 iterations on
# the noiseless 250 x 500 problem of tests/unrolled/test_lamp.py (10 % non-zeros, float64).
AMP_THRESHOLD_SCALE = 1.1402


class LAMP(UnrolledISTA):
    r"""LAMP-ℓ1 (learned AMP with soft thresholding): AMP whose matrix and threshold rule are learned per layer (untied by default).

    Layer t (from 0) maps :math:`(x_t, v_{t-1}, b_t)` to :math:`(x_{t+1}, v_t, b_{t+1})`:

    .. math::
        v_t &= y - A x_t + b_t v_{t-1}, \qquad \sigma_t = \|v_t\|_2 / \sqrt{m}, \\
        r_t &= x_t + B_t v_t, \qquad x_{t+1} = \beta_t\,\eta(r_t;\ \alpha_t \sigma_t), \\
        b_{t+1} &= \frac{\beta_t}{m}\,\|x_{t+1}\|_0,

    from :math:`x_0 = 0`, :math:`v_{-1} = 0`, :math:`b_0 = 0`, where :math:`\eta` is soft-thresholding.
    :math:`b_t v_{t-1}` is the Onsager correction. As in the authors' code, :math:`b_{t+1}` is n/m
    times the mean derivative of the shrinkage :math:`\beta_t\eta` that produced :math:`x_{t+1}`, so
    the Onsager term of layer t + 1 uses the :math:`\beta_t` of layer t. The count is not differentiable, so gradients
    reach :math:`b_{t+1}` through :math:`\beta_t` only.
    :math:`\sigma_t`, :math:`\|x_{t+1}\|_0` and :math:`b_t` are computed per sample.

    Learned per layer: :math:`B_t` (n × m, one shared B with ``tied=True``), the threshold
    multiplier :math:`\alpha_t` (``threshold_scale``) and the output scale :math:`\beta_t`
    (``output_scale``). :math:`B_t` is stored as ``W[t]`` = :math:`B_t^\top` (m × n), the layout of
    LISTA-CP, so that :math:`r_t = x_t - W_t^\top(-v_t)` is the shared :func:`ista_step` applied to
    the Onsager-corrected residual :math:`-v_t`. The measurement matrix A stays fixed.

    Initialisation is AMP: :math:`B_t = A^\top`, :math:`\alpha_t` = ``threshold_scale`` (1.1402 by
    default, see ``AMP_THRESHOLD_SCALE``) and :math:`\beta_t = 1`, so the untrained network computes
    AMP iterations. AMP's state evolution assumes A with i.i.d. N(0, 1/m) entries, which the
    reference problem has up to its column normalisation. The authors' code starts from :math:`B_t = A^\top/(1.01\|A\|_2^2)` and
    :math:`\alpha_t = 1` instead.

    NOTE: on ill-conditioned operators AMP, and so the untrained network, diverges: on the 250 × 500
    settings with κ = 5 and κ = 30 the 16th layer measured +13.9 dB and +227 dB NMSE, and training
    from there on κ = 50 blew the loss up to 5e24. Start from another initialisation there.

    Reference: Borgerding, Schniter, Rangan, "AMP-inspired deep networks for sparse linear inverse
    problems", IEEE Trans. Signal Process. 65(16), 2017, arXiv:1612.01183. The update and the
    Onsager coefficient follow the authors' code (github.com/mborgerding/onsager_deep_learning,
    ``tools/networks.py`` and ``tools/shrinkage.py``).
    """

    def __init__(self, A: Tensor, n_layers: int, threshold_scale: float = AMP_THRESHOLD_SCALE, tied: bool = False) -> None:
        super().__init__(A, n_layers, support_selection=False)
        self.tied = tied
        self.W = stacked(A, 1 if tied else n_layers)
        self.threshold_scale = per_layer(threshold_scale, n_layers, A.dtype)
        self.output_scale = per_layer(1.0, n_layers, A.dtype)

    def per_layer_parameters(self) -> dict[str, int]:
        parameters = {"threshold_scale": 0, "output_scale": 0}
        if not self.tied:
            parameters["W"] = 0
        return parameters

    def initial_state(self, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        r"""Return the state before the first layer: :math:`x_0 = 0`, the corrected residual :math:`-v_{-1} = 0` and :math:`b_0 = 0`."""
        x = y.new_zeros(*y.shape[:-1], self.A.shape[1])
        return x, y.new_zeros(y.shape), y.new_zeros(*y.shape[:-1], 1)

    def estimate(self, state: tuple[Tensor, Tensor, Tensor]) -> Tensor:
        return state[0]

    def layer(self, k: int, state: tuple[Tensor, Tensor, Tensor], y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x, residual, onsager = state
        m = self.A.shape[0]

        # The state contains -v_t = A x_t - y - b_t v_{t-1}, the sign convention of ista_step's residual.
        residual = x @ self.A.T - y + onsager * residual
        sigma = residual.norm(dim=-1, keepdim=True) / math.sqrt(m)
        W = self.W[0 if self.tied else k]
        shrunk = ista_step(x, residual, W, 1.0, self.threshold_scale[k] * sigma)

        x_next = self.output_scale[k] * shrunk
        support_size = (shrunk != 0).sum(dim=-1, keepdim=True).to(x.dtype)
        return x_next, residual, self.output_scale[k] * support_size / m
