r"""Proximal operators, all with the signature ``prox_<name>(x, threshold, ...)``.

For a convex function :math:`g`, :math:`\operatorname{prox}_{\theta g}(v) = \arg\min_x \tfrac12\|x - v\|^2 + \theta g(x)`.
Every operator here broadcasts ``threshold`` against ``x``, so a scalar, a per-layer scalar
tensor or a per-entry tensor all work, and gradients flow to both ``x`` and ``threshold``.
"""

from __future__ import annotations

import torch
from torch import Tensor


def prox_l1(x: Tensor, threshold: Tensor | float) -> Tensor:
    r"""Soft-thresholding, the prox of :math:`\theta\|x\|_1`: :math:`\operatorname{sign}(x)\max(|x| - \theta, 0)`.

    Real input uses :math:`\operatorname{sign}(x)\,\mathrm{relu}(|x| - \theta)`; complex input
    shrinks the modulus and keeps the phase, :math:`x\,\max(|x| - \theta, 0)/|x|` (0 at x = 0).

    Gradients at the kinks are fixed by this form, and callers rely on them: at :math:`|x| = \theta`
    and at :math:`x = 0` the output is 0 with zero gradient in both ``x`` and ``threshold``
    (``relu`` and ``abs`` have zero subgradient at 0 in torch). Elsewhere
    :math:`\partial/\partial x = 1[|x| > \theta]` and :math:`\partial/\partial\theta = -\operatorname{sign}(x) 1[|x| > \theta]`.
    Forms built from ``clamp`` or ``maximum`` pick other subgradients at the tie.

    Args:
        x: input, real or complex, any shape.
        threshold: :math:`\theta \ge 0`, broadcastable to ``x``.
    """
    if torch.is_complex(x):
        modulus = x.abs()
        shrunk = torch.relu(modulus - threshold)
        # Divide only where the modulus is non-zero so that x = 0 gives 0 and a finite gradient.
        safe_modulus = torch.where(modulus > 0, modulus, torch.ones_like(modulus))
        return x * (shrunk / safe_modulus)
    return torch.sign(x) * torch.relu(x.abs() - threshold)


def prox_l1_support_selection(x: Tensor, threshold: Tensor | float, bypass_fraction: float) -> Tensor:
    r"""Soft-thresholding with support selection: the largest entries by magnitude pass unchanged.

    In each sample (last dimension of length n), the ``floor(bypass_fraction · n)`` entries of largest
    :math:`|x_i|` are trusted to lie in the support and bypass the threshold; the others are
    soft-thresholded with :func:`prox_l1`. This is the "support selection" of LISTA-CPSS
    (Chen, Liu, Wang, Yin, "Theoretical linear convergence of unfolded ISTA and its practical weights
    and thresholds", NeurIPS 2018, arXiv:1808.10038) and ALISTA (Liu, Chen, Wang, Yin, ICLR 2019,
    arXiv:1812.03219). It is not the prox of a convex function.

    Args:
        x: real input of shape (..., n).
        threshold: :math:`\theta \ge 0`, broadcastable to ``x``.
        bypass_fraction: fraction in [0, 1] of the entries of each sample that bypass the threshold.
    """
    if not 0.0 <= bypass_fraction <= 1.0:
        raise ValueError(f"bypass_fraction must lie in [0, 1], got {bypass_fraction}.")
    n_bypass = int(bypass_fraction * x.shape[-1])
    thresholded = prox_l1(x, threshold)
    if n_bypass == 0:
        return thresholded

    magnitude = x.detach().abs()
    cutoff = torch.topk(magnitude, n_bypass, dim=-1).values[..., -1:]
    return torch.where(magnitude >= cutoff, x, thresholded)
