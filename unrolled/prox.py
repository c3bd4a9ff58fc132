r"""Proximal operators, all with the signature ``prox_<name>(x, threshold, ...)``.

For a convex function :math:`g`, :math:`\operatorname{prox}_{\theta g}(v) = \arg\min_x \tfrac12\|x - v\|^2 + \theta g(x)`.
Every operator here broadcasts ``threshold`` against ``x``, so a scalar, a per-layer scalar
tensor or a per-entry tensor all work, and gradients flow to both ``x`` and ``threshold``.
"""

from __future__ import annotations

import math

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
    A form built from ``torch.maximum`` picks another subgradient at the tie: it gives each argument half
    the gradient (torch 2.14).

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


def prox_l1_(x: Tensor, threshold: Tensor | float) -> Tensor:
    r"""Soft-threshold ``x`` in place, outside autograd, and return it; the values are those of :func:`prox_l1`.

    Real input uses :math:`x - \operatorname{clamp}(x, -\theta, \theta)`: two elementwise kernels and
    one temporary, where :func:`prox_l1` runs five kernels that each allocate their output. Both
    forms round identically, because for :math:`|x| > \theta` both compute :math:`\pm(|x| - \theta)`
    with one rounding and elsewhere both give 0 (a NaN input stays NaN in both). The only
    difference is the sign of zero (+0 here where :func:`prox_l1` gives −0 for negative inputs),
    which compares equal. It overwrites its input, so it is meant for the classical solvers and
    raises ``RuntimeError`` when autograd would record it. Complex input is thresholded by
    :func:`prox_l1` and copied back.

    Args:
        x: input, real or complex, any shape; overwritten with the result.
        threshold: :math:`\theta \ge 0`, broadcastable to ``x`` without enlarging it.
    """
    threshold_requires_grad = isinstance(threshold, Tensor) and threshold.requires_grad
    if torch.is_grad_enabled() and (x.requires_grad or threshold_requires_grad):
        raise RuntimeError(
            "prox_l1_ works in place outside autograd, but x or threshold requires grad. "
            "Use prox_l1, whose gradients at the kink are the documented ones."
        )
    if torch.is_complex(x):
        return x.copy_(prox_l1(x, threshold))
    negative = -threshold
    return x.sub_(x.clamp(negative, threshold))


def prox_l1_support_selection(x: Tensor, threshold: Tensor | float, bypass_fraction: float) -> Tensor:
    r"""Soft-thresholding with support selection: the largest entries by magnitude pass unchanged.

    In each sample (last dimension of length n), the ``floor(bypass_fraction · n)`` entries of largest
    :math:`|x_i|` are trusted to lie in the support and bypass the threshold; the others are
    soft-thresholded with :func:`prox_l1`. This is the "support selection" of LISTA-CPSS
    (Chen, Liu, Wang, Yin, "Theoretical linear convergence of unfolded ISTA and its practical weights
    and thresholds", NeurIPS 2018, arXiv:1808.10038) and ALISTA (Liu, Chen, Wang, Yin, ICLR 2019,
    arXiv:1812.03219). It is not the prox of a convex function.

    NOTE: the authors' TensorFlow code (``shrink_ss``) bypasses only the top entries that also
    exceed the threshold. This function follows the definition above, so small top entries pass
    unchanged. The rule is part of a trained model: ALISTA-16 trained with this one
    (``alista.sc250x500_noiseless``) measures -35.9 dB instead of -61.1 dB under the other.

    Args:
        x: real input of shape (..., n).
        threshold: :math:`\theta \ge 0`, broadcastable to ``x``.
        bypass_fraction: fraction in [0, 1] of the entries of each sample that bypass the threshold.
    """
    if not 0.0 <= bypass_fraction <= 1.0:
        raise ValueError(f"bypass_fraction must lie in [0, 1], got {bypass_fraction}.")
    # Round before the floor: 1.2 * 9 / 100 is stored as 0.10799999999999998, and a bare int()
    # would let 53 of 500 entries bypass instead of 54.
    n_bypass = math.floor(round(bypass_fraction * x.shape[-1], 9))
    thresholded = prox_l1(x, threshold)
    if n_bypass == 0:
        return thresholded

    magnitude = x.detach().abs()
    cutoff = torch.topk(magnitude, n_bypass, dim=-1).values[..., -1:]
    return torch.where(magnitude >= cutoff, x, thresholded)


def prox_l1_bypass_count(x: Tensor, threshold: Tensor | float, n_bypass: Tensor) -> Tensor:
    r"""Soft-thresholding where the ``n_bypass`` largest entries of each sample pass unchanged.

    The per-sample version of :func:`prox_l1_support_selection`, for networks that choose the
    number of trusted entries from each sample's own residual (HyperLISTA). Ties at the cutoff
    magnitude all bypass.

    Args:
        x: real input of shape (..., n).
        threshold: :math:`\theta \ge 0`, broadcastable to ``x``.
        n_bypass: integer tensor of shape (..., 1) with values in [0, n].
    """
    if n_bypass.shape != (*x.shape[:-1], 1):
        raise ValueError(f"n_bypass must have shape {(*x.shape[:-1], 1)} (one count per sample), got {tuple(n_bypass.shape)}.")
    thresholded = prox_l1(x, threshold)
    magnitude = x.detach().abs()
    ranked = magnitude.sort(dim=-1, descending=True).values
    cutoff = ranked.gather(-1, (n_bypass - 1).clamp(0, x.shape[-1] - 1))
    cutoff = torch.where(n_bypass > 0, cutoff, torch.full_like(cutoff, math.inf))
    return torch.where(magnitude >= cutoff, x, thresholded)
