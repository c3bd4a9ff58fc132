r"""Linear operators on images: the forward map, its adjoint and the constants solvers need.

A :class:`LinearOperator` maps a batch of signals of shape ``(..., *in_shape)`` to measurements of
shape ``(..., *out_shape)``; the leading dimensions are batch dimensions and pass through. Solvers
only use :meth:`~LinearOperator.forward`, :meth:`~LinearOperator.adjoint` and what is built on them,
so the data term :math:`\tfrac12\|Ax - y\|_2^2` has the gradient ``A.adjoint(A(x) - y)`` for every
operator.

Inner products follow the complex convention :math:`\langle u, v\rangle = \sum_i u_i \overline{v_i}`,
and the adjoint satisfies :math:`\langle Ax, y\rangle = \langle x, A^H y\rangle`. An operator on a
real domain whose measurements are complex (:class:`~unrolled.operators.fourier.MaskedFourier` with
``domain="real"``) is real-linear, and its adjoint is the real part of the complex adjoint, which
satisfies the same identity in the real inner product :math:`\operatorname{Re}\langle\cdot,\cdot\rangle`.
"""

from __future__ import annotations

import abc
import math

import torch
from torch import Tensor

from unrolled.operators.dense import LIPSCHITZ_SAFETY_MARGIN


class LinearOperator(abc.ABC):
    """A linear map :math:`A` from ``(..., *in_shape)`` to ``(..., *out_shape)``.

    Subclasses implement :meth:`forward` and :meth:`adjoint`, which accept any floating dtype and
    device (their fixed tensors follow the input's). :meth:`normal` and :meth:`lipschitz_constant`
    derive from them, and subclasses override them where a closed form exists.
    """

    #: shape of one signal (the trailing dimensions of the input)
    in_shape: tuple[int, ...]
    #: shape of one measurement (the trailing dimensions of the output)
    out_shape: tuple[int, ...]
    #: whether signals are complex (MRI images); real-domain operators take real signals
    complex_domain: bool = False

    @abc.abstractmethod
    def forward(self, x: Tensor) -> Tensor:
        """Return :math:`Ax` for ``x`` of shape ``(..., *in_shape)``."""

    @abc.abstractmethod
    def adjoint(self, y: Tensor) -> Tensor:
        """Return :math:`A^H y` for ``y`` of shape ``(..., *out_shape)``."""

    def __call__(self, x: Tensor) -> Tensor:
        return self.forward(x)

    def normal(self, x: Tensor) -> Tensor:
        """Return :math:`A^H A x`, the operator of the normal equations."""
        return self.adjoint(self.forward(x))

    @property
    def observed(self) -> Tensor | None:
        """Boolean tensor of ``out_shape``: which measurement entries exist, or None when all do.

        Masked operators return their measurements on the full grid with zeros where nothing was
        measured; noise must stay 0 there (:meth:`add_noise`).
        """
        return None

    def add_noise(self, y: Tensor, noise_std: float | Tensor, generator: torch.Generator | None = None) -> Tensor:
        r"""Return ``y`` plus white Gaussian noise of standard deviation ``noise_std`` on the measured entries.

        Complex measurements get circular noise: real and imaginary parts each have variance
        :math:`\sigma^2/2`, so :math:`E|w_i|^2 = \sigma^2` in both cases. Entries outside
        :attr:`observed` stay exactly 0.
        """
        if isinstance(noise_std, (int, float)) and noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, got {noise_std}.")
        if torch.is_complex(y):
            real_dtype = y.real.dtype
            noise = torch.complex(
                torch.randn(y.shape, generator=generator, dtype=real_dtype, device=y.device),
                torch.randn(y.shape, generator=generator, dtype=real_dtype, device=y.device),
            ) / math.sqrt(2.0)
        else:
            noise = torch.randn(y.shape, generator=generator, dtype=y.dtype, device=y.device)
        noise = noise * noise_std
        if self.observed is not None:
            noise = noise * self.observed.to(y.device)
        return y + noise

    def check_input(self, x: Tensor, name: str = "x") -> None:
        """Raise ``ValueError`` unless the trailing dimensions of ``x`` are :attr:`in_shape`."""
        _check_trailing_shape(x, self.in_shape, name, "in_shape")

    def check_measurements(self, y: Tensor, name: str = "y") -> None:
        """Raise ``ValueError`` unless the trailing dimensions of ``y`` are :attr:`out_shape`."""
        _check_trailing_shape(y, self.out_shape, name, "out_shape")

    def lipschitz_constant(
        self,
        max_iter: int = 500,
        tol: float = 1e-9,
        seed: int = 0,
        margin: float = LIPSCHITZ_SAFETY_MARGIN,
    ) -> float:
        r"""Return :math:`L \ge \|A\|_2^2`, the Lipschitz constant of :math:`\nabla\tfrac12\|Ax - y\|^2`.

        Power iteration on :math:`A^H A` from a seeded random start, stopped when the Rayleigh
        quotient changes by less than ``tol`` relative, times ``margin`` because power iteration
        approaches the top eigenvalue from below.
        """
        generator = torch.Generator().manual_seed(seed)
        v = torch.randn(self.in_shape, generator=generator, dtype=torch.float64)
        if self.complex_domain:
            v = torch.complex(v, torch.randn(self.in_shape, generator=generator, dtype=torch.float64))
        v = v / torch.linalg.vector_norm(v)
        estimate = 0.0
        for _ in range(max_iter):
            w = self.normal(v)
            new_estimate = float(torch.vdot(v.flatten(), w.flatten()).real)
            norm = torch.linalg.vector_norm(w)
            if norm == 0:
                return 0.0
            v = w / norm
            converged = abs(new_estimate - estimate) <= tol * abs(new_estimate)
            estimate = new_estimate
            if converged:
                break
        return estimate * margin


def _check_trailing_shape(x: Tensor, expected: tuple[int, ...], name: str, attribute: str) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}.")
    if tuple(x.shape[x.ndim - len(expected) :]) != tuple(expected) or x.ndim < len(expected):
        raise ValueError(
            f"{name} must have shape (..., {', '.join(map(str, expected))}) to match the operator's "
            f"{attribute}, got {tuple(x.shape)}."
        )
