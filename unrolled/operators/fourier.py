r"""Undersampled 2-D Fourier measurements, the forward model of compressed-sensing MRI.

:math:`y = M \odot \mathcal F x`, where :math:`\mathcal F` is the orthonormal 2-D DFT
(``torch.fft.fft2(norm="ortho")``, zero frequency at index (0, 0)) and :math:`M` a k-space
sampling mask (1 = sampled). Measurements live on the full k-space grid with zeros where nothing
was sampled. :func:`cartesian_mask` samples whole phase-encoding lines, :func:`random_mask` single
k-space points; both keep a fully sampled low-frequency centre, as MRI acquisitions do
(Lustig, Donoho and Pauly, "Sparse MRI", Magn. Reson. Med. 2007).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from unrolled.operators.base import LinearOperator

DOMAINS = ("complex", "real")


class MaskedFourier(LinearOperator):
    r"""The operator :math:`A = M\mathcal F` on images of shape ``mask.shape``.

    With ``domain="complex"`` (the default; MR images are complex) the adjoint is
    :math:`\mathcal F^H M`. With ``domain="real"`` the operator acts on real images and its adjoint is
    :math:`\operatorname{Re}(\mathcal F^H M y)`, the adjoint in the real inner product.

    Args:
        mask: real tensor (H, W) in unshifted k-space order (zero frequency at (0, 0)).
        domain: "complex" or "real".
    """

    def __init__(self, mask: Tensor, domain: str = "complex") -> None:
        if domain not in DOMAINS:
            raise ValueError(f"domain must be one of {DOMAINS}, got {domain!r}.")
        if mask.ndim != 2 or torch.is_complex(mask) or not mask.is_floating_point():
            raise ValueError(f"mask must be a real floating (H, W) tensor, got shape {tuple(mask.shape)} and dtype {mask.dtype}.")
        if not torch.isfinite(mask).all():
            raise ValueError("mask contains NaN or Inf entries; expected finite k-space weights (1 = sampled, 0 = not sampled).")
        self.mask = mask
        # Read once here: solvers that divide by the mask at the zero frequency check this flag per call.
        self.samples_zero_frequency = bool(mask[0, 0] != 0)
        self.domain = domain
        self.complex_domain = domain == "complex"
        self.in_shape = tuple(mask.shape)
        self.out_shape = self.in_shape

    def _mask_for(self, x: Tensor) -> Tensor:
        if tuple(x.shape[-2:]) != self.in_shape:
            raise ValueError(f"input of shape {tuple(x.shape)} does not match the k-space mask of shape {self.in_shape}.")
        return self.mask.to(device=x.device, dtype=x.real.dtype)

    def forward(self, x: Tensor) -> Tensor:
        return self._mask_for(x) * torch.fft.fft2(x, norm="ortho")

    def adjoint(self, y: Tensor) -> Tensor:
        x = torch.fft.ifft2(self._mask_for(y) * y, norm="ortho")
        return x if self.complex_domain else x.real

    def normal(self, x: Tensor) -> Tensor:
        x_normal = torch.fft.ifft2(self._mask_for(x).square() * torch.fft.fft2(x, norm="ortho"), norm="ortho")
        return x_normal if self.complex_domain else x_normal.real

    @property
    def observed(self) -> Tensor:
        return self.mask != 0

    def zero_filled(self, y: Tensor) -> Tensor:
        """Return the zero-filled reconstruction :math:`\\mathcal F^H y`, the usual MRI baseline."""
        return self.adjoint(y)

    def solve_normal(self, rhs: Tensor, rho: float | Tensor, spectrum: Tensor | None = None) -> Tensor:
        r"""Return the solution of :math:`(A^H A + \rho K^H K)\,x = b` by two FFTs.

        :math:`K^H K` must be diagonal in the DFT basis with eigenvalues ``spectrum`` (H, W): a
        periodic convolution such as the periodic finite-difference operator; None means
        :math:`K = I`. Needs the complex domain, where :math:`A^H A = \mathcal F^H M^2 \mathcal F`.
        ``rho`` may be a tensor broadcastable to ``rhs`` (one value per image).
        """
        if not self.complex_domain:
            raise ValueError("solve_normal needs domain='complex': in the real domain A^H A is not diagonal in k-space.")
        diagonal = self._mask_for(rhs).square()
        regulariser = torch.ones_like(diagonal) if spectrum is None else spectrum.to(device=rhs.device, dtype=diagonal.dtype)
        # Finite-difference and zero-mean filter spectra vanish at the zero frequency, where only the mask is left.
        if spectrum is not None and not self.samples_zero_frequency and float(regulariser[0, 0]) == 0:
            raise ValueError(
                "the k-space mask does not sample the zero frequency (mask[0, 0] = 0) and the regulariser's spectrum "
                "is 0 there, so (A^H A + rho K^H K) is singular; sample the centre (center_fraction > 0)."
            )
        return torch.fft.ifft2(torch.fft.fft2(rhs, norm="ortho") / (diagonal + rho * regulariser), norm="ortho")

    def lipschitz_constant(self, **_: object) -> float:
        r"""Return :math:`\max_k M_k^2`, exact because :math:`\mathcal F` is unitary."""
        return float(self.mask.double().square().max())


def _check_sampling(shape: tuple[int, int], observed_ratio: float, center_fraction: float) -> None:
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"shape must be (H, W) with positive sizes, got {shape}.")
    if not 0.0 < observed_ratio <= 1.0:
        raise ValueError(f"observed_ratio must lie in (0, 1], got {observed_ratio}.")
    if not 0.0 < center_fraction <= observed_ratio:
        raise ValueError(
            f"center_fraction must lie in (0, observed_ratio = {observed_ratio}], got {center_fraction}: the zero "
            "frequency must be sampled, because TV-ADMM and ADMM-Net divide by the mask there."
        )


def cartesian_mask(
    shape: tuple[int, int],
    observed_ratio: float,
    generator: torch.Generator,
    center_fraction: float = 0.08,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    r"""Return a Cartesian k-space mask that samples whole rows (phase-encoding lines).

    ``round(observed_ratio · H)`` of the H rows are sampled: the ``ceil(center_fraction · H)`` rows
    of lowest frequency, and the others uniformly at random without replacement. Every column of a
    sampled row is sampled, so the fraction of sampled entries equals the fraction of sampled rows.
    The mask is in unshifted order (zero frequency at row 0), as :class:`MaskedFourier` expects.
    """
    _check_sampling(shape, observed_ratio, center_fraction)
    height, width = shape
    n_rows = max(1, round(observed_ratio * height))
    n_center = min(n_rows, math.ceil(center_fraction * height))

    # Frequencies in centred order: row height // 2 is frequency 0 after the shift below.
    centred = torch.zeros(height, dtype=torch.bool)
    start = height // 2 - n_center // 2
    centred[start : start + n_center] = True
    others = (~centred).nonzero().flatten()
    chosen = others[torch.randperm(others.numel(), generator=generator)[: n_rows - n_center]]
    centred[chosen] = True

    rows = torch.fft.ifftshift(centred)
    return rows[:, None].expand(height, width).to(dtype).contiguous()


def random_mask(
    shape: tuple[int, int],
    observed_ratio: float,
    generator: torch.Generator,
    center_fraction: float = 0.04,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    r"""Return a k-space mask that samples single points uniformly at random around a full centre.

    ``round(observed_ratio · H · W)`` points are sampled: a centred square of side
    ``ceil(sqrt(center_fraction) · min(H, W))`` at the lowest frequencies, and the others uniformly
    at random without replacement. The mask is in unshifted order.
    """
    _check_sampling(shape, observed_ratio, center_fraction)
    height, width = shape
    n_points = max(1, round(observed_ratio * height * width))
    side = min(math.ceil(math.sqrt(center_fraction) * min(height, width)), math.isqrt(n_points))

    centred = torch.zeros(height, width, dtype=torch.bool)
    top, left = height // 2 - side // 2, width // 2 - side // 2
    centred[top : top + side, left : left + side] = True
    others = (~centred.flatten()).nonzero().flatten()
    chosen = others[torch.randperm(others.numel(), generator=generator)[: n_points - int(centred.sum())]]
    centred.view(-1)[chosen] = True

    return torch.fft.ifftshift(centred).to(dtype)
