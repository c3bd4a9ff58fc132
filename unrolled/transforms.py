r"""Orthonormal sparsifying transforms of images of shape (..., H, W): the 2-D DCT and wavelet transform.

Each transform :math:`T` is a class with ``forward`` (analysis, image to coefficients of the same
shape) and ``inverse`` (synthesis). Both are orthonormal, :math:`T^H T = I`, so ``inverse`` is also
the adjoint, ``inverse(forward(x)) == x`` up to rounding and :math:`\|T x\|_2 = \|x\|_2`. They apply
dense matrices along each axis: an (H, H) matrix on the left and a (W, W) one on the right. The
matrices are built once in float64 per size, dtype and device and cached, so the transforms run
on any device and dtype (real or complex), and autograd differentiates them as matrix products.

Wavelet filters come from PyWavelets (``pywt.Wavelet(name).dec_lo`` and ``dec_hi``) and the
periodized transform matches ``pywt.wavedec2(x, name, mode="periodization", level=levels)``
packed by ``pywt.coeffs_to_array``.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pywt
import torch
from torch import Tensor

# Families of PyWavelets whose filters form an orthonormal filter bank. The biorthogonal families
# ("bior", "rbio") are not orthonormal, and "dmey" is an FIR approximation of the Meyer wavelet
# that is orthonormal only approximately.
ORTHONORMAL_WAVELET_FAMILIES = ("haar", "db", "sym", "coif")

# Maximum number of (size, dtype, device) matrices per cache. A wavelet pyramid needs one size per level and axis.
_CACHE_SIZE = 64


def _check_image(x: Tensor) -> None:
    if x.ndim < 2:
        raise ValueError(f"x must have shape (..., H, W), got shape {tuple(x.shape)}.")


def _apply_separable(x: Tensor, left: Tensor, right: Tensor) -> Tensor:
    """Return ``left @ x @ right.T`` with the matrices cast to the dtype of ``x`` (complex included)."""
    return left.to(x.dtype) @ x @ right.to(x.dtype).mT


def _apply_separable_adjoint(x: Tensor, left: Tensor, right: Tensor) -> Tensor:
    """Return ``left.T @ x @ right``, the inverse of :func:`_apply_separable` for orthogonal matrices."""
    return left.to(x.dtype).mT @ x @ right.to(x.dtype)


@functools.lru_cache(maxsize=_CACHE_SIZE)
def dct_matrix(n: int, dtype: torch.dtype = torch.float64, device: torch.device | None = None) -> Tensor:
    r"""Return the orthonormal DCT-II matrix of size (n, n), :math:`C_{kj} = s_k \cos(\pi (2j + 1) k / 2n)`.

    :math:`s_0 = \sqrt{1/n}` and :math:`s_k = \sqrt{2/n}` otherwise, so ``C @ x`` equals
    ``scipy.fft.dct(x, norm="ortho")``. The result is cached, so callers must not modify it in place.
    """
    k = torch.arange(n, dtype=torch.float64)[:, None]
    j = torch.arange(n, dtype=torch.float64)[None, :]
    matrix = torch.cos(math.pi * (2 * j + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    matrix[0] /= math.sqrt(2.0)
    return matrix.to(dtype=dtype, device=device)


class DCT2:
    r"""Orthonormal 2-D DCT-II over the last two dimensions: :math:`C_H X C_W^\top`.

    ``forward`` equals ``scipy.fft.dctn(x, axes=(-2, -1), norm="ortho")`` and ``inverse`` equals
    ``scipy.fft.idctn`` with the same arguments, for any H and W. Calling the object applies ``forward``.
    """

    def forward(self, x: Tensor) -> Tensor:
        """Return the DCT coefficients of ``x``, shape (..., H, W)."""
        _check_image(x)
        return _apply_separable(x, self._matrix(x, -2), self._matrix(x, -1))

    def inverse(self, coefficients: Tensor) -> Tensor:
        """Return the image with these DCT coefficients, shape (..., H, W). This is also the adjoint of :meth:`forward`."""
        _check_image(coefficients)
        return _apply_separable_adjoint(coefficients, self._matrix(coefficients, -2), self._matrix(coefficients, -1))

    __call__ = forward

    @staticmethod
    def _matrix(x: Tensor, dim: int) -> Tensor:
        return dct_matrix(x.shape[dim], x.real.dtype if torch.is_complex(x) else x.dtype, x.device)


def _orthonormal_wavelet(name: str) -> pywt.Wavelet:
    """Return ``pywt.Wavelet(name)``, or raise ``ValueError`` unless it is a discrete orthonormal wavelet."""
    try:
        wavelet = pywt.Wavelet(name)
    except ValueError as error:
        raise ValueError(
            f"wavelet {name!r} is not a discrete wavelet of PyWavelets ({error}). "
            f"Use an orthonormal one: 'haar', 'dbN', 'symN' or 'coifN', see pywt.wavelist(kind='discrete')."
        ) from None
    if wavelet.short_family_name not in ORTHONORMAL_WAVELET_FAMILIES or not wavelet.orthogonal:
        raise ValueError(
            f"wavelet {name!r} (family {wavelet.family_name!r}) is not an exactly orthonormal wavelet, so the "
            f"inverse of its transform is not the adjoint. Use one of the families {ORTHONORMAL_WAVELET_FAMILIES}, "
            "e.g. 'haar', 'db4' or 'sym8'."
        )
    return wavelet


@functools.lru_cache(maxsize=_CACHE_SIZE)
def dwt_matrix(wavelet: str, n: int, dtype: torch.dtype = torch.float64, device: torch.device | None = None) -> Tensor:
    r"""Return the (n, n) matrix of one level of the periodized orthonormal DWT of a signal of even length n.

    The first n/2 rows give the approximation coefficients and the last n/2 the detail
    coefficients, as ``numpy.concatenate(pywt.dwt(x, wavelet, mode="periodization"))``: with the
    decomposition filters :math:`h` (``dec_lo``), :math:`g` (``dec_hi``) of length F,

    .. math:: a_k = \sum_j h_j\, x_{(2k + F/2 - j) \bmod n}, \qquad d_k = \sum_j g_j\, x_{(2k + F/2 - j) \bmod n}.

    Filters longer than n wrap around several times; the matrix stays orthogonal. The result is
    cached, so callers must not modify it in place.
    """
    filters = _orthonormal_wavelet(wavelet)
    if n < 2 or n % 2:
        raise ValueError(f"one DWT level needs an even length >= 2, got {n}.")

    half = n // 2
    taps = len(filters.dec_lo)
    rows = np.broadcast_to(np.arange(half)[:, None], (half, taps))
    columns = (2 * rows + taps // 2 - np.arange(taps)[None, :]) % n
    matrix = np.zeros((n, n))
    np.add.at(matrix, (rows, columns), np.broadcast_to(np.asarray(filters.dec_lo), (half, taps)))
    np.add.at(matrix, (rows + half, columns), np.broadcast_to(np.asarray(filters.dec_hi), (half, taps)))
    return torch.from_numpy(matrix).to(dtype=dtype, device=device)


class Wavelet2D:
    r"""Orthonormal 2-D discrete wavelet transform with periodization, ``levels`` levels deep.

    Each level replaces the top-left (h, w) block, the current approximation, by
    :math:`D_h X D_w^\top` (see :func:`dwt_matrix`), whose quadrants are the approximation cA (top
    left), the details cV (top right), cH (bottom left) and cD (bottom right). The coefficients of
    all levels therefore fill one tensor of the image's shape, laid out as ``pywt.coeffs_to_array``
    lays out ``pywt.wavedec2(x, wavelet, mode="periodization", level=levels)``.

    Args:
        wavelet: name of an orthonormal PyWavelets wavelet: ``"haar"``, ``"dbN"``, ``"symN"`` or ``"coifN"``.
        levels: number of decomposition levels, >= 1. H and W must be divisible by ``2**levels``.

    Raises:
        ValueError: the wavelet is unknown or not orthonormal (biorthogonal ``"biorN.M"``, ``"dmey"``),
            or ``levels`` < 1.
    """

    def __init__(self, wavelet: str = "db4", levels: int = 3) -> None:
        _orthonormal_wavelet(wavelet)
        if not isinstance(levels, int) or levels < 1:
            raise ValueError(f"levels must be an integer >= 1, got {levels!r}.")
        self.wavelet = wavelet
        self.levels = levels

    def __repr__(self) -> str:
        return f"Wavelet2D(wavelet={self.wavelet!r}, levels={self.levels})"

    def forward(self, x: Tensor) -> Tensor:
        """Return the packed wavelet coefficients of ``x``, shape (..., H, W)."""
        coefficients = x
        for height, width in self._block_sizes(x):
            block = _apply_separable(coefficients[..., :height, :width], self._matrix(x, height), self._matrix(x, width))
            coefficients = self._replace_block(coefficients, block)
        return coefficients

    def inverse(self, coefficients: Tensor) -> Tensor:
        """Return the image with these packed wavelet coefficients, shape (..., H, W). This is also the adjoint of :meth:`forward`."""
        image = coefficients
        for height, width in reversed(self._block_sizes(coefficients)):
            block = _apply_separable_adjoint(image[..., :height, :width], self._matrix(image, height), self._matrix(image, width))
            image = self._replace_block(image, block)
        return image

    __call__ = forward

    def _block_sizes(self, x: Tensor) -> list[tuple[int, int]]:
        """Return the (h, w) of the approximation block that each level transforms, finest level first.

        Raises ``ValueError`` unless H and W are divisible by ``2**levels``.
        """
        _check_image(x)
        height, width = x.shape[-2:]
        factor = 2**self.levels
        if height % factor or width % factor:
            raise ValueError(
                f"Wavelet2D with levels={self.levels} needs H and W divisible by 2**levels = {factor}, "
                f"got an image of shape {tuple(x.shape)}. Crop or pad the image, or use fewer levels."
            )
        return [(height >> level, width >> level) for level in range(self.levels)]

    def _matrix(self, x: Tensor, n: int) -> Tensor:
        return dwt_matrix(self.wavelet, n, x.real.dtype if torch.is_complex(x) else x.dtype, x.device)

    @staticmethod
    def _replace_block(x: Tensor, block: Tensor) -> Tensor:
        """Return ``x`` with its top-left block replaced by ``block``, without in-place writes (autograd-safe)."""
        height, width = block.shape[-2:]
        top = torch.cat([block, x[..., :height, width:]], dim=-1)
        return torch.cat([top, x[..., height:, :]], dim=-2)
