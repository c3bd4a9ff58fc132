r"""Proximal operators, all with the signature ``prox_<name>(x, threshold, ...)``.

For a convex function :math:`g`, :math:`\operatorname{prox}_{\theta g}(v) = \arg\min_x \tfrac12\|x - v\|^2 + \theta g(x)`.
The entrywise operators broadcast ``threshold`` against ``x``, so a scalar, a per-layer scalar
tensor or a per-entry tensor all work, and gradients flow to both ``x`` and ``threshold``. The
group operators take one threshold per group instead. The projections (prox of an indicator
function) accept ``threshold`` for the common signature and ignore it, because
:math:`\theta\,\iota_C = \iota_C` for every :math:`\theta > 0`.

Pairs of operators here are linked by the Moreau decomposition
:math:`v = \operatorname{prox}_{\theta g}(v) + \theta \operatorname{prox}_{g^*/\theta}(v/\theta)`, where
:math:`g^*` is the convex conjugate: soft-thresholding and the box :math:`[-\theta, \theta]`,
block soft-thresholding and the ℓ2 ball of radius :math:`\theta`.
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


def _check_nonnegative(name: str, value: Tensor | float) -> None:
    """Raise ``ValueError`` unless every entry of ``value`` is >= 0 (NaN fails too)."""
    value_tensor = torch.as_tensor(value).detach()
    if torch.is_complex(value_tensor) or not (value_tensor >= 0).all():
        raise ValueError(f"{name} must be real and >= 0, got {value}.")


def _check_real(name: str, x: Tensor) -> None:
    if torch.is_complex(x):
        raise ValueError(f"{name} is defined for real input only, got dtype {x.dtype}. Apply it to x.real and x.imag separately if that is meant.")


def _check_broadcast_to(name: str, value: Tensor | float, shape: torch.Size) -> None:
    """Raise ``ValueError`` unless ``value`` broadcasts to ``shape`` without enlarging it."""
    value_shape = torch.as_tensor(value).shape
    try:
        broadcast = torch.broadcast_shapes(value_shape, shape)
    except RuntimeError:
        broadcast = None
    if broadcast != shape:
        raise ValueError(f"{name} of shape {tuple(value_shape)} must broadcast to shape {tuple(shape)}.")


def prox_group_l1(x: Tensor, threshold: Tensor | float, group_dim: int = -1) -> Tensor:
    r"""Block soft-thresholding, the prox of the group-Lasso penalty :math:`\theta \sum_g \|x_g\|_2`.

    .. math:: \operatorname{prox}(v) = \arg\min_x \tfrac12\|x - v\|_2^2 + \theta \sum_g \|x_g\|_2,
              \qquad x_g = v_g \max(\|v_g\|_2 - \theta, 0) / \|v_g\|_2 .

    A group is a slice of ``x`` along ``group_dim``: for ``x`` of shape (..., n_groups, group_size)
    and ``group_dim=-1`` each row is one group. Complex input uses the complex ℓ2 norm and keeps the
    direction of each group. A group of norm at most :math:`\theta` maps to exact zeros, and a
    group that is already zero has a zero gradient (no NaN).

    Args:
        x: input, real or complex, any shape.
        threshold: :math:`\theta \ge 0`, broadcastable to the group norms, which have the shape of
            ``x`` with size 1 along ``group_dim`` (a scalar, or one value per group or per sample).
            A negative Python number raises ``ValueError``. Tensors are not checked, so that a learned
            threshold costs no device synchronisation.
        group_dim: dimension along which the entries of one group lie.

    Raises:
        ValueError: ``threshold`` is a negative number or does not broadcast to the group norms.
    """
    if not isinstance(threshold, Tensor):
        _check_nonnegative("threshold", threshold)
    # vector_norm has gradient 0 at a zero vector (torch 2.14), so a zero group gets finite gradients.
    norm = torch.linalg.vector_norm(x, dim=group_dim, keepdim=True)
    _check_broadcast_to("threshold", threshold, norm.shape)

    # relu(norm - threshold) / norm, with 1 in place of a zero norm, where the numerator is 0 too.
    safe_norm = torch.where(norm > 0, norm, torch.ones_like(norm))
    return x * (torch.relu(norm - threshold) / safe_norm)


def prox_nonneg(x: Tensor, threshold: Tensor | float | None = None) -> Tensor:
    r"""Projection onto the non-negative orthant, the prox of its indicator :math:`\iota_{x \ge 0}`.

    .. math:: \operatorname{prox}(v) = \arg\min_x \tfrac12\|x - v\|_2^2 + \theta\,\iota_{x \ge 0}(x) = \max(v, 0).

    ``threshold`` is accepted for the common signature and ignored, because
    :math:`\theta\,\iota = \iota` for every :math:`\theta > 0`. The gradient at :math:`v = 0` is 0.

    Args:
        x: real input, any shape.
        threshold: ignored.

    Raises:
        ValueError: ``x`` is complex.
    """
    _check_real("prox_nonneg", x)
    return torch.relu(x)


def prox_box(x: Tensor, threshold: Tensor | float | None, lower: Tensor | float, upper: Tensor | float) -> Tensor:
    r"""Projection onto the box :math:`[\ell, u]`, the prox of its indicator.

    .. math:: \operatorname{prox}(v) = \arg\min_x \tfrac12\|x - v\|_2^2 + \theta\,\iota_{[\ell, u]}(x)
              = \min(\max(v, \ell), u) .

    ``threshold`` is accepted for the common signature and ignored, as in :func:`prox_nonneg`.
    Gradients flow to ``x`` inside the box and to a tensor bound where it is active. A one-sided
    box takes ``-math.inf`` or ``math.inf`` as the other bound.

    Args:
        x: real input, any shape.
        threshold: ignored.
        lower: :math:`\ell`, broadcastable to ``x``.
        upper: :math:`u \ge \ell`, broadcastable to ``x``.

    Raises:
        ValueError: ``x`` is complex, a bound does not broadcast to ``x``, or ``lower > upper`` somewhere.
    """
    _check_real("prox_box", x)
    _check_broadcast_to("lower", lower, x.shape)
    _check_broadcast_to("upper", upper, x.shape)
    lower = torch.as_tensor(lower, dtype=x.dtype, device=x.device)
    upper = torch.as_tensor(upper, dtype=x.dtype, device=x.device)

    broadcast_lower, broadcast_upper = torch.broadcast_tensors(lower.detach(), upper.detach())
    inverted = broadcast_lower > broadcast_upper
    if inverted.any():
        index = tuple(int(i) for i in inverted.nonzero()[0])
        raise ValueError(
            f"lower must be <= upper, got lower={broadcast_lower[index].item()} > upper={broadcast_upper[index].item()} "
            f"at index {index} of the broadcast bounds."
        )
    return torch.clamp(x, lower, upper)


def prox_l2_ball(x: Tensor, threshold: Tensor | float | None, radius: Tensor | float, dim: int = -1) -> Tensor:
    r"""Projection of each sample onto the ℓ2 ball of radius :math:`r`, the prox of its indicator.

    .. math:: \operatorname{prox}(v) = \arg\min_x \tfrac12\|x - v\|_2^2 + \theta\,\iota_{\|x\|_2 \le r}(x)
              = v \min(1, r / \|v\|_2) .

    The norm is taken along ``dim``, so each slice along it is one sample. Complex input uses the
    complex ℓ2 norm. ``threshold`` is accepted for the common signature and ignored, as in
    :func:`prox_nonneg`. Inside the ball the Jacobian is the identity and ``radius`` gets no gradient.

    The Moreau decomposition ties it to :func:`prox_group_l1`: with :math:`r = \theta`,
    ``prox_l2_ball(v, None, θ) + prox_group_l1(v, θ) == v``.

    Args:
        x: input, real or complex, any shape.
        threshold: ignored.
        radius: :math:`r \ge 0`, broadcastable to the sample norms (the shape of ``x`` with size 1
            along ``dim``).
        dim: dimension along which one sample lies.

    Raises:
        ValueError: ``radius`` is negative somewhere or does not broadcast to the sample norms.
    """
    _check_nonnegative("radius", radius)
    norm = torch.linalg.vector_norm(x, dim=dim, keepdim=True)
    _check_broadcast_to("radius", radius, norm.shape)

    outside = norm > radius
    safe_norm = torch.where(outside, norm, torch.ones_like(norm))
    scale = torch.where(outside, radius / safe_norm, torch.ones_like(norm))
    return x * scale


def prox_elastic_net(x: Tensor, threshold: Tensor | float, l2_ratio: Tensor | float) -> Tensor:
    r"""Prox of the elastic-net penalty :math:`\theta(\|x\|_1 + \tfrac{\rho}{2}\|x\|_2^2)` with :math:`\rho` = ``l2_ratio``.

    .. math:: \operatorname{prox}(v) = \arg\min_x \tfrac12\|x - v\|_2^2 + \theta\|x\|_1 + \tfrac{\theta\rho}{2}\|x\|_2^2
              = \frac{\eta_\theta(v)}{1 + \theta\rho},

    where :math:`\eta_\theta` is the soft-threshold :func:`prox_l1` (real or complex). Both
    :math:`\theta` and :math:`\rho` scale the ℓ2 term, so :math:`\rho = 0` gives :func:`prox_l1`.
    This differs from scikit-learn's ``ElasticNet``, which mixes the two terms with
    ``l1_ratio`` and ``1 - l1_ratio``.

    Args:
        x: input, real or complex, any shape.
        threshold: :math:`\theta \ge 0`, broadcastable to ``x``. A negative Python number raises
            ``ValueError``. Tensors are not checked.
        l2_ratio: :math:`\rho \ge 0`, broadcastable to ``x``.

    Raises:
        ValueError: ``threshold`` is a negative number or ``l2_ratio`` is negative somewhere.
    """
    if not isinstance(threshold, Tensor):
        _check_nonnegative("threshold", threshold)
    _check_nonnegative("l2_ratio", l2_ratio)
    return prox_l1(x, threshold) / (1 + threshold * l2_ratio)


def prox_l1_nonneg(x: Tensor, threshold: Tensor | float) -> Tensor:
    r"""Prox of the non-negative Lasso penalty :math:`\theta\|x\|_1 + \iota_{x \ge 0}(x)`.

    .. math:: \operatorname{prox}(v) = \arg\min_{x \ge 0} \tfrac12\|x - v\|_2^2 + \theta\|x\|_1 = \max(v - \theta, 0) .

    Args:
        x: real input, any shape.
        threshold: :math:`\theta \ge 0`, broadcastable to ``x``. A negative Python number raises
            ``ValueError``. Tensors are not checked.

    Raises:
        ValueError: ``x`` is complex or ``threshold`` is a negative number.
    """
    _check_real("prox_l1_nonneg", x)
    if not isinstance(threshold, Tensor):
        _check_nonnegative("threshold", threshold)
    return torch.relu(x - threshold)
