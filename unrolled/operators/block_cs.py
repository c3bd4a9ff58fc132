r"""Block-based compressive sensing: each B × B block of an image is measured by the same matrix Φ.

An image of shape (H, W) with H and W multiples of the block size B is cut into non-overlapping
blocks, each flattened row-major into a vector of length B², and measured as :math:`y_b = \Phi x_b`
with :math:`\Phi \in \mathbb R^{m \times B^2}`. The measurement of one image has shape
``(n_blocks, m)``, blocks in row-major order. ISTA-Net and most block-CS work use B = 33 and
:math:`m = \operatorname{round}(r B^2)` at CS ratio r (272 rows at r = 0.25), with a Gaussian Φ whose
rows are orthonormalised (Zhang and Ghanem, "ISTA-Net: interpretable optimization-inspired deep
network for image compressive sensing", CVPR 2018, arXiv:1706.07929).

Image sizes that are not multiples of B raise an error. :func:`pad_to_block_multiple` pads with
zeros at the bottom and right, as the ISTA-Net evaluation code does, and :func:`crop_to_shape`
removes the padding after reconstruction.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from unrolled.operators.base import LinearOperator

ISTA_NET_BLOCK_SIZE = 33


def gaussian_block_matrix(
    cs_ratio: float, block_size: int = ISTA_NET_BLOCK_SIZE, seed: int = 0, orthonormal_rows: bool = True
) -> Tensor:
    r"""Return a float64 measurement matrix Φ of shape (round(cs_ratio·B²), B²).

    Entries are i.i.d. :math:`\mathcal N(0, 1/m)` from ``seed``; with ``orthonormal_rows`` the rows
    are replaced by an orthonormal basis of their span (QR), so :math:`\Phi\Phi^\top = I`, the
    pseudo-inverse is :math:`\Phi^\top` and :math:`\|\Phi\|_2 = 1`.
    """
    if not 0.0 < cs_ratio <= 1.0:
        raise ValueError(f"cs_ratio must lie in (0, 1], got {cs_ratio}.")
    n = block_size * block_size
    m = max(1, round(cs_ratio * n))
    generator = torch.Generator().manual_seed(seed)
    phi = torch.randn(m, n, generator=generator, dtype=torch.float64) / m**0.5
    if orthonormal_rows:
        q, r = torch.linalg.qr(phi.T)
        # Fix the signs so that the result does not depend on the QR implementation's convention.
        phi = (q * torch.sign(torch.diagonal(r))).T.contiguous()
    return phi


def pad_to_block_multiple(image: Tensor, block_size: int = ISTA_NET_BLOCK_SIZE) -> Tensor:
    """Pad ``image`` (..., H, W) with zeros at the bottom and right to the next multiples of ``block_size``."""
    height, width = image.shape[-2:]
    pad_bottom = -height % block_size
    pad_right = -width % block_size
    return F.pad(image, (0, pad_right, 0, pad_bottom))


def crop_to_shape(image: Tensor, shape: tuple[int, int]) -> Tensor:
    """Return the top-left ``shape`` window of ``image`` (..., H, W), undoing :func:`pad_to_block_multiple`."""
    return image[..., : shape[0], : shape[1]]


class BlockCS(LinearOperator):
    r"""Block compressive sensing :math:`y_b = \Phi x_b` on images of shape ``image_shape``.

    Args:
        phi: measurement matrix of shape (m, block_size²).
        image_shape: (H, W), both multiples of the block size.
    """

    def __init__(self, phi: Tensor, image_shape: tuple[int, int]) -> None:
        if phi.ndim != 2:
            raise ValueError(f"phi must be a 2-D (m, B²) matrix, got shape {tuple(phi.shape)}.")
        block_size = round(phi.shape[1] ** 0.5)
        if block_size * block_size != phi.shape[1]:
            raise ValueError(f"phi must have B² columns for a block size B, got {phi.shape[1]} columns.")
        height, width = image_shape
        if height % block_size or width % block_size:
            raise ValueError(
                f"image shape {tuple(image_shape)} is not a multiple of the block size {block_size}; "
                "pad the images with unrolled.operators.pad_to_block_multiple first."
            )
        self.phi = phi
        self.block_size = block_size
        self.in_shape = (height, width)
        self.n_blocks = (height // block_size) * (width // block_size)
        self.out_shape = (self.n_blocks, phi.shape[0])

    def _phi_for(self, x: Tensor) -> Tensor:
        return self.phi.to(device=x.device, dtype=x.dtype)

    def to_blocks(self, image: Tensor) -> Tensor:
        """Cut ``image`` (..., H, W) into row-major blocks of shape (..., n_blocks, B²)."""
        self.check_input(image, "image")
        b = self.block_size
        height, width = self.in_shape
        batch = image.shape[:-2]
        blocks = image.reshape(*batch, height // b, b, width // b, b).transpose(-3, -2)
        return blocks.reshape(*batch, self.n_blocks, b * b)

    def from_blocks(self, blocks: Tensor) -> Tensor:
        """Inverse of :meth:`to_blocks`: (..., n_blocks, B²) back to (..., H, W)."""
        b = self.block_size
        height, width = self.in_shape
        batch = blocks.shape[:-2]
        image = blocks.reshape(*batch, height // b, width // b, b, b).transpose(-3, -2)
        return image.reshape(*batch, height, width)

    def forward(self, x: Tensor) -> Tensor:
        return self.to_blocks(x) @ self._phi_for(x).T

    def adjoint(self, y: Tensor) -> Tensor:
        self.check_measurements(y)
        return self.from_blocks(y @ self._phi_for(y))

    def normal(self, x: Tensor) -> Tensor:
        # Two thin products, (blocks Φᵀ) Φ, cost 2·m·B² per block; the Gram matrix ΦᵀΦ would cost B⁴.
        phi = self._phi_for(x)
        return self.from_blocks((self.to_blocks(x) @ phi.T) @ phi)

    def lipschitz_constant(self, **_: object) -> float:
        r"""Return :math:`\|\Phi\|_2^2`, which equals :math:`\|A\|_2^2` because A is block diagonal."""
        return float(torch.linalg.matrix_norm(self.phi.double(), ord=2) ** 2)
