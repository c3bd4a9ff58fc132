r"""A dense matrix acting on flattened images: :math:`y = A\,\operatorname{vec}(x)`.

The general compressive-sensing operator (a Gaussian A measures the whole image at once) and the
bridge between image-shaped signals and the matrix solvers of :mod:`unrolled.solvers.ista`.
Images are flattened row-major.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from unrolled.operators.base import LinearOperator
from unrolled.operators.dense import check_operator, lipschitz_constant


def gaussian_matrix(m: int, n: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> Tensor:
    r"""Return an (m, n) matrix with i.i.d. :math:`\mathcal N(0, 1/m)` entries drawn from ``seed``."""
    if m < 1 or n < 1:
        raise ValueError(f"m and n must be positive, got m={m}, n={n}.")
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(m, n, generator=generator, dtype=dtype) / math.sqrt(m)


class MatrixOperator(LinearOperator):
    """The operator :math:`x \\mapsto A\\,\\operatorname{vec}(x)` for images of shape ``in_shape``.

    Args:
        A: real or complex matrix of shape (m, prod(in_shape)).
        in_shape: shape of one signal; defaults to (n,), a plain vector.
    """

    def __init__(self, A: Tensor, in_shape: tuple[int, ...] | None = None) -> None:
        check_operator(A)
        in_shape = (A.shape[1],) if in_shape is None else tuple(in_shape)
        if math.prod(in_shape) != A.shape[1]:
            raise ValueError(f"A has {A.shape[1]} columns, but in_shape {in_shape} has {math.prod(in_shape)} entries.")
        self.A = A
        self.in_shape = in_shape
        self.out_shape = (A.shape[0],)
        self.complex_domain = torch.is_complex(A)

    def _matrix_for(self, x: Tensor) -> Tensor:
        dtype = torch.promote_types(self.A.dtype, x.dtype)
        return self.A.to(device=x.device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        flat = x.reshape(*x.shape[: x.ndim - len(self.in_shape)], -1)
        A = self._matrix_for(x)
        return flat.to(A.dtype) @ A.T

    def adjoint(self, y: Tensor) -> Tensor:
        self.check_measurements(y)
        A = self._matrix_for(y)
        flat = y.to(A.dtype) @ A.conj()
        return flat.reshape(*y.shape[:-1], *self.in_shape)

    def lipschitz_constant(self, **_: object) -> float:
        """Return a safe bound on :math:`\\|A\\|_2^2`, by the power iteration of :mod:`unrolled.operators.dense`."""
        if self.complex_domain:
            return float(torch.linalg.matrix_norm(self.A.to(torch.complex128), ord=2) ** 2)
        return lipschitz_constant(self.A)
