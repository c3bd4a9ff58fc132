"""Linear operators: dense matrices for sparse coding, and image operators with adjoints.

:mod:`~unrolled.operators.dense` checks plain matrices and bounds their Lipschitz constant. The
image operators (:class:`LinearOperator` subclasses) map batches of images to measurements:
dense Gaussian CS, block CS, pixel masks and undersampled Fourier (MRI).
"""

from unrolled.operators.base import LinearOperator
from unrolled.operators.block_cs import (
    ISTA_NET_BLOCK_SIZE,
    BlockCS,
    crop_to_shape,
    gaussian_block_matrix,
    pad_to_block_multiple,
)
from unrolled.operators.dense import (
    LIPSCHITZ_SAFETY_MARGIN,
    check_measurements,
    check_operator,
    lipschitz_constant,
    power_iteration,
)
from unrolled.operators.fourier import MaskedFourier, cartesian_mask, random_mask
from unrolled.operators.mask import PixelMask
from unrolled.operators.matrix import MatrixOperator, gaussian_matrix

__all__ = [
    "ISTA_NET_BLOCK_SIZE",
    "LIPSCHITZ_SAFETY_MARGIN",
    "BlockCS",
    "LinearOperator",
    "MaskedFourier",
    "MatrixOperator",
    "PixelMask",
    "cartesian_mask",
    "check_measurements",
    "check_operator",
    "crop_to_shape",
    "gaussian_block_matrix",
    "gaussian_matrix",
    "lipschitz_constant",
    "pad_to_block_multiple",
    "power_iteration",
    "random_mask",
]
