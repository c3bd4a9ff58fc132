r"""ADMM for imaging inverse problems: total-variation or wavelet regularisation, ℓ2, ℓ1 or Huber data term.

Problems, for each image x of a batch and a linear operator A (:mod:`unrolled.operators`):

.. math::
    \min_x\; D(Ax - y) + \mathrm{reg}\cdot\mathrm{TV}(x) \qquad\text{or}\qquad
    \min_x\; D(Ax - y) + \mathrm{reg}\,\|Wx\|_1,

optionally with :math:`\ell \le x \le u`, where :math:`D(r) = \tfrac12\|r\|_2^2` (``"l2"``),
:math:`\|r\|_1` (``"l1"``, robust to outliers such as salt-and-pepper noise) or the Huber function
:math:`\sum_i h_\delta(r_i)`, :math:`h_\delta(t) = \tfrac12|t|^2` for :math:`|t| \le \delta` and
:math:`\delta(|t| - \tfrac12\delta)` otherwise (``"huber"``). TV is :func:`unrolled.tv.total_variation`
and W the orthonormal :class:`unrolled.transforms.Wavelet2D`; complex images use the modulus.

Splitting (scaled-form ADMM of :mod:`unrolled.solvers.admm`), one block per term:
:math:`z_1 = \nabla x` or :math:`Wx` with the prox of the regulariser; for the robust data terms
:math:`z_2 = Ax - y` with the soft-threshold or the Huber prox; for a box :math:`z_3 = x` with the
projection. The x-update solves

.. math:: (A^HA + w\textstyle\sum_b K_b^H K_b)\,x = \text{rhs}, \qquad w = \rho \text{ for } \ell_2,\; w = 1 \text{ otherwise},

(with the robust terms the :math:`\rho` of every block cancels), where the sum runs over the
regulariser and box blocks. The solve is exact when both :math:`A^HA` and :math:`\sum_b K_b^HK_b`
are diagonal in one basis: with the periodic gradient (whose spectrum is
:func:`unrolled.tv.finite_difference_spectrum`) for :class:`~unrolled.operators.MaskedFourier` in
the complex domain and for a constant :class:`~unrolled.operators.PixelMask` (denoising), and with an
orthonormal W (:math:`W^HW = I`) for both operators and every mask. Otherwise conjugate gradient
runs, warm-started at the previous x. By default the TV boundary is periodic where the exact solve
applies and Neumann elsewhere.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from unrolled.operators import LinearOperator, MaskedFourier, PixelMask
from unrolled.prox import prox_box, prox_group_l1, prox_l1
from unrolled.solvers.admm import (
    ADMMResult,
    ADMMSplitting,
    Blocks,
    check_penalty,
    check_stopping,
    expand_per_sample,
    run_admm,
)
from unrolled.solvers.cg import conjugate_gradient
from unrolled.solvers.ista import check_reg
from unrolled.transforms import Wavelet2D
from unrolled.tv import BOUNDARIES, finite_difference, finite_difference_adjoint, finite_difference_spectrum, total_variation

DATA_TERMS = ("l2", "l1", "huber")
X_SOLVERS = ("auto", "exact", "cg")


@dataclass
class _Block:
    """One split term :math:`z_b = K_b x - c_b` with its prox and the DFT spectrum of :math:`K_b^H K_b`.

    ``gram_spectrum`` is a float s when :math:`K_b^H K_b = sI`, a tensor (H, W) of eigenvalues when it
    is diagonal in the 2-D DFT basis, and None otherwise (or for the data block, which the x-update
    handles through the operator).
    """

    forward: Callable[[Tensor], Tensor]
    adjoint: Callable[[Tensor], Tensor]
    prox: Callable[[Tensor, Tensor], Tensor]
    gram_spectrum: Tensor | float | None
    offset: Tensor | None = None
    is_data: bool = False


def prox_huber(x: Tensor, threshold: Tensor | float, delta: float) -> Tensor:
    r"""Prox of the Huber function, :math:`\arg\min_z \tfrac12\|z - x\|^2 + \theta\sum_i h_\delta(z_i)`, entrywise.

    :math:`z = x/(1 + \theta)` where :math:`|x| \le \delta(1 + \theta)` and
    :math:`z = x(1 - \theta\delta/|x|)` elsewhere; complex entries keep their phase.
    """
    modulus = x.abs()
    inside = modulus <= delta * (1 + threshold)
    safe_modulus = torch.where(inside, torch.ones_like(modulus), modulus)
    return torch.where(inside, x / (1 + threshold), x * (1 - threshold * delta / safe_modulus))


def huber(x: Tensor, delta: float) -> Tensor:
    """Return the entrywise Huber function :math:`h_\\delta` of the moduli of ``x``."""
    modulus = x.abs()
    return torch.where(modulus <= delta, 0.5 * modulus.square(), delta * (modulus - 0.5 * delta))


def _exact_solver(operator: LinearOperator, spectrum: Tensor | float | None) -> Callable[[Tensor, Tensor], Tensor] | None:
    r"""Return ``(rhs, w) -> (A^HA + w S)^{-1} rhs`` for S with eigenvalues ``spectrum`` in the DFT basis, or None.

    ``w`` has one value per image, shaped (..., 1, 1).
    """
    if spectrum is None:
        return None
    if isinstance(operator, MaskedFourier) and operator.complex_domain:
        if not operator.samples_zero_frequency and not isinstance(spectrum, float) and float(spectrum[0, 0]) == 0:
            raise ValueError(
                "the k-space mask does not sample the zero frequency (mask[0, 0] = 0), where the TV spectrum is 0 too, "
                "so the x-update is singular; sample the centre of k-space (center_fraction > 0)."
            )
        if isinstance(spectrum, float):
            return lambda rhs, weight: operator.solve_normal(rhs, weight * spectrum)
        return lambda rhs, weight: operator.solve_normal(rhs, weight, spectrum)
    if isinstance(operator, PixelMask):
        if isinstance(spectrum, float):
            return lambda rhs, weight: operator.solve_normal(rhs, weight * spectrum)
        if _is_constant(operator.mask):
            gain = float(operator.mask.flatten()[0]) ** 2
            return lambda rhs, weight: _fourier_solve(rhs, gain, weight, spectrum)
    return None


def _is_constant(mask: Tensor) -> bool:
    return bool((mask == mask.flatten()[0]).all())


def _fourier_solve(rhs: Tensor, gain: float, weight: Tensor, spectrum: Tensor) -> Tensor:
    r"""Solve :math:`(gI + wS)x = b` for S diagonal in the 2-D DFT basis with eigenvalues ``spectrum``."""
    spectrum = spectrum.to(device=rhs.device, dtype=rhs.real.dtype)
    solution = torch.fft.ifft2(torch.fft.fft2(rhs) / (gain + weight * spectrum))
    return solution if torch.is_complex(rhs) else solution.real


class _ImagingXUpdate:
    r"""The x-update :math:`(A^HA + w\sum_b K_b^HK_b)x = \text{rhs}` (module docstring), exact or by CG."""

    def __init__(
        self, operator: LinearOperator, y: Tensor, blocks: list[_Block], robust: bool,
        x_solver: str, cg_max_iter: int, cg_tol: float,
    ) -> None:
        self.operator = operator
        self.blocks = blocks
        self.robust = robust
        self.Aty = None if robust else operator.adjoint(y)
        self.regularisers = [block for block in blocks if not block.is_data]
        self.cg_max_iter = cg_max_iter
        self.cg_tol = cg_tol

        spectra = [block.gram_spectrum for block in self.regularisers]
        spectrum = None if any(s is None for s in spectra) else sum(spectra[1:], spectra[0])
        self.exact = _exact_solver(operator, spectrum)
        if x_solver == "exact" and self.exact is None:
            raise ValueError(
                f"x_solver='exact' needs an operator and regulariser with an exact normal solve (MaskedFourier in the "
                f"complex domain or PixelMask, with the periodic TV boundary or a wavelet), got {type(operator).__name__}. "
                "Use x_solver='auto' or 'cg'."
            )
        if x_solver == "cg":
            self.exact = None

    def __call__(self, v: Blocks, x: Tensor, rho: Tensor) -> Tensor:
        rho = expand_per_sample(rho, x)
        back = None
        for block, v_block in zip(self.blocks, v):
            target = v_block if block.offset is None else v_block + block.offset
            term = block.adjoint(target)
            back = term if back is None else back + term
        if self.robust:
            rhs, weight = back, torch.ones_like(rho)
        else:
            rhs, weight = self.Aty + rho * back, rho

        if self.exact is not None:
            return self.exact(rhs, weight)
        return conjugate_gradient(
            lambda w: self._normal(w, weight), rhs, x0=x, max_iter=self.cg_max_iter, tol=self.cg_tol, vector_dims=2
        )

    def _normal(self, x: Tensor, weight: Tensor) -> Tensor:
        result = self.operator.normal(x)
        for block in self.regularisers:
            result = result + weight * block.adjoint(block.forward(x))
        return result


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}.")


def _check_box(box: tuple[float, float] | None, complex_images: bool) -> None:
    if box is None:
        return
    if complex_images:
        raise ValueError("box constrains real images; the operator works on complex images, so pass box=None.")
    if len(box) != 2 or not box[0] <= box[1]:
        raise ValueError(f"box must be a pair (lower, upper) with lower <= upper, got {box!r}.")


def _solve(
    operator: LinearOperator,
    y: Tensor,
    reg: float,
    rho: float,
    regulariser: Callable[[torch.dtype, torch.device], _Block],
    regulariser_value: Callable[[Tensor], Tensor],
    *,
    data_term: str,
    huber_delta: float,
    box: tuple[float, float] | None,
    x_solver: str,
    cg_max_iter: int,
    cg_tol: float,
    max_iter: int,
    abs_tol: float,
    rel_tol: float,
    residual_balancing: bool,
    x0: Tensor | None,
    reference: Tensor | None,
    trace: bool,
    progress: bool,
    callback: Callable[[int, Tensor], None] | None = None,
    name: str,
) -> ADMMResult:
    """Check the arguments shared by :func:`admm_tv` and :func:`admm_wavelet`, build the splitting and run it."""
    if not isinstance(operator, LinearOperator):
        raise TypeError(f"operator must be a LinearOperator, got {type(operator).__name__}.")
    operator.check_measurements(y)
    if not torch.isfinite(y).all():
        raise ValueError("y contains NaN or Inf entries; expected finite measurements.")
    check_reg(reg)
    check_penalty(rho)
    check_stopping(max_iter, abs_tol, rel_tol)
    _check_choice("data_term", data_term, DATA_TERMS)
    _check_choice("x_solver", x_solver, X_SOLVERS)
    if data_term == "huber" and not (math.isfinite(huber_delta) and huber_delta > 0):
        raise ValueError(f"huber_delta must be a positive finite number, got {huber_delta!r}.")
    _check_box(box, operator.complex_domain)

    real_dtype = y.real.dtype
    signal_dtype = real_dtype
    if operator.complex_domain:
        signal_dtype = torch.complex128 if real_dtype == torch.float64 else torch.complex64
    batch_shape = y.shape[: y.ndim - len(operator.out_shape)]
    signal_shape = (*batch_shape, *operator.in_shape)
    if x0 is None:
        x0 = torch.zeros(signal_shape, dtype=signal_dtype, device=y.device)
    elif x0.shape != signal_shape:
        raise ValueError(f"x0 must have shape {tuple(signal_shape)} (batch shape of y, then the operator's in_shape), got {tuple(x0.shape)}.")
    if reference is not None and torch.broadcast_shapes(reference.shape, signal_shape) != signal_shape:
        raise ValueError(f"reference of shape {tuple(reference.shape)} must broadcast to the image shape {tuple(signal_shape)}.")
    x0 = x0.to(signal_dtype)

    blocks = [regulariser(real_dtype, y.device)]
    if data_term != "l2":
        blocks.append(_data_block(operator, y, data_term, huber_delta))
    if box is not None:
        blocks.append(_box_block(box))
    x_update = _ImagingXUpdate(operator, y, blocks, data_term != "l2", x_solver, cg_max_iter, cg_tol)

    def transform(x: Tensor) -> Blocks:
        return tuple(block.forward(x) if block.offset is None else block.forward(x) - block.offset for block in blocks)

    def adjoint(values: Blocks) -> Tensor:
        return sum((block.adjoint(value) for block, value in zip(blocks[1:], values[1:])), blocks[0].adjoint(values[0]))

    def prox(w: Blocks, rho_per_sample: Tensor) -> Blocks:
        return tuple(block.prox(value, rho_per_sample) for block, value in zip(blocks, w))

    def objective(x: Tensor) -> Tensor:
        x = x.to(torch.complex128 if torch.is_complex(x) else torch.float64)
        residual = operator.forward(x) - y.to(torch.complex128 if torch.is_complex(y) else torch.float64)
        dims = tuple(range(residual.ndim - len(operator.out_shape), residual.ndim))
        if data_term == "l2":
            data = 0.5 * residual.abs().square().sum(dim=dims)
        elif data_term == "l1":
            data = residual.abs().sum(dim=dims)
        else:
            data = huber(residual, huber_delta).sum(dim=dims)
        return data + reg * regulariser_value(x)

    splitting = ADMMSplitting(
        x_update=x_update, transform=transform, adjoint=adjoint, prox=prox, objective=objective,
        offset=tuple(block.offset for block in blocks),
    )
    return run_admm(
        splitting, x0, rho, batch_shape, max_iter=max_iter, abs_tol=abs_tol, rel_tol=rel_tol,
        residual_balancing=residual_balancing, reference=reference, trace=trace, progress=progress, name=name,
        callback=callback,
    )


def _data_block(operator: LinearOperator, y: Tensor, data_term: str, huber_delta: float) -> _Block:
    """Build the block :math:`z = Ax - y` of the robust data terms, with the prox of :math:`D/\\rho`."""

    def prox(w: Tensor, rho: Tensor) -> Tensor:
        threshold = 1.0 / expand_per_sample(rho, w)
        if data_term == "l1":
            return prox_l1(w, threshold)
        return prox_huber(w, threshold, huber_delta)

    return _Block(forward=operator.forward, adjoint=operator.adjoint, prox=prox, gram_spectrum=None, offset=y, is_data=True)


def _box_block(box: tuple[float, float]) -> _Block:
    """Build the block :math:`z = x` with the projection onto the box."""
    lower, upper = float(box[0]), float(box[1])

    def identity(x: Tensor) -> Tensor:
        return x

    return _Block(
        forward=identity, adjoint=identity, prox=lambda w, rho: prox_box(w, None, lower, upper), gram_spectrum=1.0
    )


def _default_boundary(operator: LinearOperator) -> str:
    """Periodic where the x-update with the periodic gradient has an exact solve, Neumann elsewhere."""
    if isinstance(operator, MaskedFourier) and operator.complex_domain:
        return "periodic"
    if isinstance(operator, PixelMask) and _is_constant(operator.mask):
        return "periodic"
    return "neumann"


def admm_tv(
    operator: LinearOperator,
    y: Tensor,
    reg: float,
    rho: float = 1.0,
    *,
    data_term: str = "l2",
    huber_delta: float = 0.05,
    isotropic: bool = True,
    boundary: str | None = None,
    box: tuple[float, float] | None = None,
    x_solver: str = "auto",
    cg_max_iter: int = 50,
    cg_tol: float = 1e-6,
    max_iter: int = 300,
    abs_tol: float = 1e-4,
    rel_tol: float = 1e-3,
    residual_balancing: bool = False,
    x0: Tensor | None = None,
    reference: Tensor | None = None,
    trace: bool = False,
    progress: bool = False,
    callback: Callable[[int, Tensor], None] | None = None,
) -> ADMMResult:
    r"""ADMM for :math:`\min_x D(Ax - y) + \mathrm{reg}\cdot\mathrm{TV}(x)`, e.g. :math:`\tfrac12\|Ax - y\|_2^2 + \mathrm{reg}\cdot\mathrm{TV}(x)`.

    Covers denoising (a :class:`~unrolled.operators.PixelMask` of ones), inpainting (a binary
    PixelMask), compressive sensing (:class:`~unrolled.operators.BlockCS`,
    :class:`~unrolled.operators.MatrixOperator`) and CS-MRI (:class:`~unrolled.operators.MaskedFourier`,
    complex images). The module docstring gives the splitting and when the x-update is exact. The
    split variable of the TV term, ``result.z[0]``, is :math:`\nabla x` with shape (..., 2, H, W).

    Args:
        operator: the forward operator A.
        y: measurements of shape (..., *operator.out_shape); the leading dimensions are a batch.
        reg: weight of the TV term, >= 0.
        rho: initial penalty ρ > 0. Images on the [0, 1] scale with the ℓ2 data term and reg around
            0.01 to 0.1 work with ρ between 0.1 and 10; ``residual_balancing`` corrects a poor choice.
            The ℓ1 data term is on another scale: on inpainting with outliers, reg near 1 worked where
            0.01 to 0.1 reproduced the outliers.
        data_term: ``"l2"`` (:math:`\tfrac12\|Ax - y\|^2`), ``"l1"`` (:math:`\|Ax - y\|_1`) or
            ``"huber"`` (:math:`\sum_i h_\delta((Ax - y)_i)`).
        huber_delta: δ of the Huber function, > 0, in the units of y.
        isotropic: isotropic (ℓ2 over each pixel's gradient pair) or anisotropic TV.
        boundary: ``"periodic"`` or ``"neumann"`` for the finite differences; None picks periodic for
            MaskedFourier in the complex domain and for a constant PixelMask, Neumann otherwise.
        box: ``(lower, upper)`` to constrain x to :math:`[\ell, u]` (real images only); use
            ``(0.0, math.inf)`` for non-negativity. The objective in the trace leaves out the
            indicator of the box.
        x_solver: ``"auto"`` (exact where available, else CG), ``"exact"`` (raise if unavailable)
            or ``"cg"``.
        cg_max_iter: maximum CG iterations per x-update.
        cg_tol: relative residual at which CG stops.
        max_iter: maximum number of ADMM iterations.
        abs_tol: :math:`\epsilon_{\text{abs}}` of the stopping rule of :mod:`unrolled.solvers.admm`.
        rel_tol: :math:`\epsilon_{\text{rel}}` of the stopping rule.
        residual_balancing: adapt ρ per image (μ = 10, τ = 2).
        x0: starting image of shape (..., *operator.in_shape); zeros by default.
        reference: ground-truth image, broadcastable to x, for the PSNR column of the trace.
        trace: record an :class:`~unrolled.solvers.admm.ADMMTrace`.
        progress: show a progress bar.
        callback: called as ``callback(k, x)`` after every iteration k (see :func:`unrolled.solvers.admm.run_admm`).

    Raises:
        ValueError: ``reg`` is negative, ``rho`` is not positive, y or x0 does not match the
            operator's shapes, or an option is out of range.
    """
    if boundary is None:
        boundary = _default_boundary(operator)
    _check_choice("boundary", boundary, BOUNDARIES)

    def gradient_block(dtype: torch.dtype, device: torch.device) -> _Block:
        spectrum = finite_difference_spectrum(operator.in_shape, "periodic", dtype, device) if boundary == "periodic" else None

        def prox(w: Tensor, rho_per_sample: Tensor) -> Tensor:
            threshold = reg / expand_per_sample(rho_per_sample, w)
            return prox_group_l1(w, threshold, group_dim=-3) if isotropic else prox_l1(w, threshold)

        return _Block(
            forward=lambda x: finite_difference(x, boundary),
            adjoint=lambda p: finite_difference_adjoint(p, boundary),
            prox=prox,
            gram_spectrum=spectrum,
        )

    return _solve(
        operator, y, reg, rho, gradient_block, lambda x: total_variation(x, isotropic, boundary),
        data_term=data_term, huber_delta=huber_delta, box=box, x_solver=x_solver, cg_max_iter=cg_max_iter,
        cg_tol=cg_tol, max_iter=max_iter, abs_tol=abs_tol, rel_tol=rel_tol, residual_balancing=residual_balancing,
        x0=x0, reference=reference, trace=trace, progress=progress, name="ADMM-TV", callback=callback,
    )


def admm_wavelet(
    operator: LinearOperator,
    y: Tensor,
    reg: float,
    rho: float = 1.0,
    *,
    wavelet: str = "db4",
    levels: int = 3,
    data_term: str = "l2",
    huber_delta: float = 0.05,
    box: tuple[float, float] | None = None,
    x_solver: str = "auto",
    cg_max_iter: int = 50,
    cg_tol: float = 1e-6,
    max_iter: int = 300,
    abs_tol: float = 1e-4,
    rel_tol: float = 1e-3,
    residual_balancing: bool = False,
    x0: Tensor | None = None,
    reference: Tensor | None = None,
    trace: bool = False,
    progress: bool = False,
    callback: Callable[[int, Tensor], None] | None = None,
) -> ADMMResult:
    r"""ADMM for :math:`\min_x D(Ax - y) + \mathrm{reg}\,\|Wx\|_1` with an orthonormal wavelet transform W.

    Every coefficient is penalised, the coarsest approximation included. Because :math:`W^HW = I`,
    the x-update is exact for :class:`~unrolled.operators.PixelMask` and for
    :class:`~unrolled.operators.MaskedFourier` in the complex domain, which makes this the classical
    wavelet baseline of CS-MRI (Lustig, Donoho, Pauly, "Sparse MRI", Magn. Reson. Med. 2007). The
    split variable ``result.z[0]`` contains the packed coefficients :math:`Wx`, shape (..., H, W).

    Args:
        wavelet: name of an orthonormal PyWavelets wavelet (``"haar"``, ``"dbN"``, ``"symN"``, ``"coifN"``).
        levels: decomposition levels; H and W must be divisible by ``2**levels``.

    The other arguments are those of :func:`admm_tv`.
    """
    transform = Wavelet2D(wavelet, levels)

    def wavelet_block(dtype: torch.dtype, device: torch.device) -> _Block:
        def prox(w: Tensor, rho_per_sample: Tensor) -> Tensor:
            return prox_l1(w, reg / expand_per_sample(rho_per_sample, w))

        return _Block(forward=transform.forward, adjoint=transform.inverse, prox=prox, gram_spectrum=1.0)

    def l1_norm(x: Tensor) -> Tensor:
        return transform.forward(x).abs().sum(dim=(-2, -1))

    return _solve(
        operator, y, reg, rho, wavelet_block, l1_norm,
        data_term=data_term, huber_delta=huber_delta, box=box, x_solver=x_solver, cg_max_iter=cg_max_iter,
        cg_tol=cg_tol, max_iter=max_iter, abs_tol=abs_tol, rel_tol=rel_tol, residual_balancing=residual_balancing,
        x0=x0, reference=reference, trace=trace, progress=progress, name="ADMM-wavelet", callback=callback,
    )
