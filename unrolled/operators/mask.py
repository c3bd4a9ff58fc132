r"""Pixel masks: inpainting with missing entries, :math:`y = m \odot x`.

The mask :math:`m` has the image's shape, with 1 for an observed pixel and 0 for a missing one
(``observed_ratio`` is the fraction of ones). Non-binary weights are allowed: a mask entry of 0.001
is a pixel measured with a small gain, not a missing one, and :meth:`PixelMask.pseudo_inverse`
divides it out exactly.
"""

from __future__ import annotations

import torch
from torch import Tensor

from unrolled.operators.base import LinearOperator


class PixelMask(LinearOperator):
    r"""The diagonal operator :math:`A = \operatorname{diag}(m)` on images of ``mask.shape``.

    Args:
        mask: real tensor of shape ``(H, W)`` (or any image shape), finite; 1 = observed, 0 = missing.
            A batch of masks of shape ``(N, H, W)`` is allowed too, then inputs must have batch N.
    """

    def __init__(self, mask: Tensor) -> None:
        if not isinstance(mask, Tensor) or torch.is_complex(mask) or not mask.is_floating_point():
            raise TypeError(f"mask must be a real floating tensor, got {getattr(mask, 'dtype', type(mask).__name__)}.")
        if mask.ndim < 2:
            raise ValueError(f"mask must have at least 2 dimensions (H, W), got shape {tuple(mask.shape)}.")
        if not torch.isfinite(mask).all():
            raise ValueError("mask contains NaN or Inf entries; expected finite weights (1 = observed, 0 = missing).")
        self.mask = mask
        self.in_shape = tuple(mask.shape[-2:])
        self.out_shape = self.in_shape

    def _mask_for(self, x: Tensor) -> Tensor:
        if tuple(x.shape[-2:]) != self.in_shape:
            raise ValueError(f"image of shape {tuple(x.shape)} does not match the mask of shape {tuple(self.mask.shape)}.")
        # One mask per image: the batch dimensions must be the masks' own, not broadcast against them.
        if self.mask.ndim > 2 and tuple(x.shape[:-2]) != tuple(self.mask.shape[:-2]):
            raise ValueError(
                f"a batch of shape {tuple(x.shape)} does not match the {tuple(self.mask.shape[:-2])} per-image masks "
                f"of shape {tuple(self.mask.shape)}; pass one image per mask."
            )
        return self.mask.to(device=x.device, dtype=x.real.dtype)

    def forward(self, x: Tensor) -> Tensor:
        return x * self._mask_for(x)

    def adjoint(self, y: Tensor) -> Tensor:
        # The mask is real, so diag(m) is self-adjoint.
        return y * self._mask_for(y)

    def normal(self, x: Tensor) -> Tensor:
        return x * self._mask_for(x).square()

    @property
    def observed(self) -> Tensor:
        return self.mask != 0

    def pseudo_inverse(self, y: Tensor) -> Tensor:
        r"""Return :math:`A^+ y`: :math:`y_i / m_i` where :math:`m_i \ne 0` and 0 elsewhere.

        For noiseless :math:`y = m \odot x` this recovers :math:`x` exactly on the observed pixels,
        whatever the size of the non-zero weights.
        """
        mask = self._mask_for(y)
        safe = torch.where(mask != 0, mask, torch.ones_like(mask))
        return torch.where(mask != 0, y / safe, torch.zeros_like(y))

    def solve_normal(self, rhs: Tensor, rho: float | Tensor) -> Tensor:
        r"""Return the solution of :math:`(A^H A + \rho I)\,x = b`, exact since both are diagonal."""
        return rhs / (self._mask_for(rhs).square() + rho)

    def lipschitz_constant(self, **_: object) -> float:
        """Return :math:`\\max_i m_i^2`, the exact :math:`\\|A\\|_2^2` of a diagonal operator."""
        return float(self.mask.double().square().max())
