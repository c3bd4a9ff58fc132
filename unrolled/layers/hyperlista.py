r"""HyperLISTA: ALISTA with momentum whose threshold, momentum and support size are computed from the residual.

Only three scalars are tuned, so the network transfers across sparsity levels and signal
magnitudes that differ from training.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from unrolled.layers.alista import alista_weight, mutual_coherence
from unrolled.layers.base import UnrolledISTA
from unrolled.prox import prox_l1_bypass_count


class HyperLISTA(UnrolledISTA):
    r"""HyperLISTA: :math:`x_{k+1} = \eta^{p_k}_{\theta_k}\big(x_k - W^\top(Ax_k - y) + \beta_k (x_k - x_{k-1})\big)`.

    W is the analytic weight of :func:`~unrolled.layers.alista.alista_weight` and, for each sample,

    .. math::
        \theta_k = c_1\,\mu\,\|A^+(Ax_k - y)\|_1,\qquad
        \beta_k = c_2\,\mu\,\|x_k\|_0,\qquad
        p_k = \min\Big(\big\lfloor c_3 \log\frac{\|A^+ y\|_1}{\|A^+(Ax_k - y)\|_1}\big\rfloor,\ n\Big),

    where :math:`\mu` is the generalised coherence :math:`\max_{i \ne j} |w_i^\top a_j|`,
    :math:`A^+` the pseudo-inverse, and :math:`\eta^{p}_{\theta}` soft-thresholding at
    :math:`\theta` with the :math:`p` largest entries passing unchanged (support selection). The
    threshold follows the residual down, the momentum grows with the support and the trusted
    support grows as the residual falls below the measurements.

    :math:`c_1` and :math:`c_2` are learnable (gradients reach them through :math:`\theta_k` and
    :math:`\beta_k`); :math:`c_3` only sets an integer count and gets no gradient, so it is a
    constructor argument to be tuned by search on validation data. W, :math:`A^+` and :math:`\mu`
    are recomputed from A and not stored in the weights.

    Reference: Chen, Liu, Wang, Yin, "Hyperparameter tuning is all you need for LISTA",
    NeurIPS 2021, arXiv:2110.15900.
    """

    def __init__(self, A: Tensor, n_layers: int, c1: float = 0.04, c2: float = 0.02, c3: float = 16.0) -> None:
        super().__init__(A, n_layers, support_selection=False)
        for name, value in (("c1", c1), ("c2", c2), ("c3", c3)):
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}.")
        W = alista_weight(A)
        self.register_buffer("W", W, persistent=False)
        self.register_buffer("pinv", torch.linalg.pinv(A.to(torch.float64)).to(A.dtype).T.contiguous(), persistent=False)
        self.coherence = mutual_coherence(A, W)
        self.c1 = nn.Parameter(torch.tensor(float(c1), dtype=A.dtype))
        self.c2 = nn.Parameter(torch.tensor(float(c2), dtype=A.dtype))
        self.c3 = float(c3)

    def per_layer_parameters(self) -> dict[str, int]:
        return {}

    def initial_state(self, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x = super().initial_state(y)
        measurement_norm = (y @ self.pinv).abs().sum(-1, keepdim=True)
        return x, x, measurement_norm

    def estimate(self, state: tuple[Tensor, Tensor, Tensor]) -> Tensor:
        return state[0]

    def layer(self, k: int, state: tuple[Tensor, Tensor, Tensor], y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x, x_previous, measurement_norm = state
        residual = x @ self.A.T - y
        residual_norm = (residual @ self.pinv).abs().sum(-1, keepdim=True)
        threshold = self.c1 * self.coherence * residual_norm
        momentum = self.c2 * self.coherence * (x != 0).sum(-1, keepdim=True).to(x.dtype)
        # The support count needs no gradient; the clamp keeps log finite once the residual is 0.
        ratio = measurement_norm / residual_norm.detach().clamp_min(torch.finfo(x.dtype).tiny)
        n_bypass = (self.c3 * ratio.clamp_min(1.0).log()).floor().clamp(0, x.shape[-1]).long()
        v = x - residual @ self.W + momentum * (x - x_previous)
        return prox_l1_bypass_count(v, threshold, n_bypass), x, measurement_norm
