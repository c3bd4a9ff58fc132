r"""Proximal gradient descent (ISTA) and FISTA on image operators, and the shared update step.

Problem, for each image of a batch:

.. math:: \min_x \tfrac12\|Ax - y\|_2^2 + \mathrm{reg}\,g(Wx),

where A is a :class:`~unrolled.operators.LinearOperator`, g is a convex penalty with a cheap prox
and W an optional orthonormal transform (:math:`W^H W = W W^H = I`, such as an orthonormal
wavelet or DCT), the identity when None. Because W is orthonormal,
:math:`\operatorname{prox}_{\theta\, g\circ W}(v) = W^H \operatorname{prox}_{\theta g}(Wv)`, so the
analysis and the synthesis forms coincide. Wavelet-FISTA is ``prox=prox_l1`` with a wavelet
transform, TV-FISTA is ``prox=prox_tv`` with no transform.

:func:`gradient_step` and :func:`proximal_gradient_step` are the one place where the update is
written. The classical solver below and the unrolled networks (:mod:`unrolled.layers.pgd_cnn`,
:mod:`unrolled.layers.ista_net`) call them.

References:
    Daubechies, Defrise, De Mol, "An iterative thresholding algorithm for linear inverse problems with
    a sparsity constraint", Comm. Pure Appl. Math., 2004 (ISTA).
    Beck, Teboulle, "A fast iterative shrinkage-thresholding algorithm for linear inverse problems",
    SIAM J. Imaging Sci., 2009 (FISTA).
    O'Donoghue, Candès, "Adaptive restart for accelerated gradient schemes", Found. Comput. Math. 15,
    2015, arXiv:1204.3982 (restart).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor
from tqdm.auto import tqdm

from unrolled.metrics import ratio_db
from unrolled.operators import LinearOperator
from unrolled.prox import prox_l1, prox_l1_nonneg, prox_nonneg
from unrolled.tv import prox_tv, total_variation

RESTART_SCHEMES = ("gradient", "function")

Prox = Callable[[Tensor, "Tensor | float"], Tensor]
Penalty = Callable[[Tensor], Tensor]


class OrthonormalTransform(Protocol):
    """An orthonormal analysis transform W: ``forward`` computes Wx and ``inverse`` computes :math:`W^H c`."""

    def forward(self, x: Tensor) -> Tensor: ...

    def inverse(self, coefficients: Tensor) -> Tensor: ...


def gradient_step(x: Tensor, y: Tensor, operator: LinearOperator, step_size: Tensor | float) -> Tensor:
    r"""Return the gradient step :math:`x - \gamma A^H(Ax - y)` on the data term :math:`\tfrac12\|Ax - y\|^2`.

    Args:
        x: images of shape (..., *operator.in_shape).
        y: measurements of shape (..., *operator.out_shape).
        operator: the forward operator A.
        step_size: :math:`\gamma`, a number or a tensor broadcastable to ``x``.
    """
    return x - step_size * operator.adjoint(operator.forward(x) - y)


def apply_prox(
    v: Tensor, prox: Prox, threshold: Tensor | float, transform: OrthonormalTransform | None = None
) -> Tensor:
    r"""Return :math:`\operatorname{prox}_{\theta\, g\circ W}(v) = W^H \operatorname{prox}_{\theta g}(Wv)`, or :math:`\operatorname{prox}_{\theta g}(v)` without a transform."""
    if transform is None:
        return prox(v, threshold)
    return transform.inverse(prox(transform.forward(v), threshold))


def proximal_gradient_step(
    x: Tensor,
    y: Tensor,
    operator: LinearOperator,
    step_size: Tensor | float,
    prox: Prox,
    threshold: Tensor | float,
    transform: OrthonormalTransform | None = None,
) -> Tensor:
    r"""Apply one proximal gradient update :math:`x^+ = W^H\operatorname{prox}_{\theta g}\big(W(x - \gamma A^H(Ax - y))\big)`.

    The classical solver uses :math:`\gamma = 1/L` and :math:`\theta = \gamma\,\mathrm{reg}`. The
    step is differentiable in ``x``, ``y``, ``step_size`` and ``threshold`` wherever ``prox`` is.

    Args:
        x: current estimate, shape (..., *operator.in_shape).
        y: measurements, shape (..., *operator.out_shape).
        operator: the forward operator A.
        step_size: :math:`\gamma`, broadcastable to ``x``.
        prox: a proximal operator with the signature ``prox(v, threshold)``, such as
            :func:`unrolled.prox.prox_l1` or :func:`unrolled.tv.prox_tv`.
        threshold: :math:`\theta`, passed to ``prox``.
        transform: orthonormal W, or None for the identity.
    """
    return apply_prox(gradient_step(x, y, operator, step_size), prox, threshold, transform)


def _l1_norm_per_image(batch_shape: torch.Size) -> Penalty:
    def l1_norm(coefficients: Tensor) -> Tensor:
        return coefficients.abs().reshape(*batch_shape, -1).sum(-1)

    return l1_norm


def _zero_per_image(batch_shape: torch.Size) -> Penalty:
    # The indicator of a constraint set is 0 at the iterates, which the projection keeps feasible.
    def zero(coefficients: Tensor) -> Tensor:
        return coefficients.new_zeros(batch_shape, dtype=coefficients.real.dtype)

    return zero


# The penalty g that belongs to each prox of the library, for the objective in traces and restarts.
# prox_tv maps to the isotropic Neumann TV of its defaults, so a partial with other options needs
# an explicit penalty.
_PENALTY_FACTORIES: dict[Callable, Callable[[torch.Size], Penalty]] = {
    prox_l1: _l1_norm_per_image,
    prox_l1_nonneg: _l1_norm_per_image,
    prox_nonneg: _zero_per_image,
    prox_tv: lambda batch_shape: total_variation,
}


def default_penalty(prox: Prox, batch_shape: torch.Size) -> Penalty | None:
    """Return the penalty g whose prox is ``prox`` (one value per image of ``batch_shape``), or None for an unknown prox."""
    factory = _PENALTY_FACTORIES.get(prox)
    return None if factory is None else factory(batch_shape)


def composite_objective(
    x: Tensor,
    y: Tensor,
    operator: LinearOperator,
    reg: float,
    penalty: Penalty,
    transform: OrthonormalTransform | None = None,
) -> Tensor:
    r"""Return :math:`\tfrac12\|Ax - y\|^2 + \mathrm{reg}\,g(Wx)` per image, in float64 (complex128 for complex data).

    Args:
        x: images of shape (..., *operator.in_shape).
        y: measurements of shape (..., *operator.out_shape).
        operator: the forward operator A.
        reg: :math:`\mathrm{reg} \ge 0`.
        penalty: g, mapping the images (or their coefficients Wx) to one value per image.
        transform: orthonormal W, or None for the identity.
    """
    x = x.to(torch.complex128 if torch.is_complex(x) else torch.float64)
    y = y.to(torch.complex128 if torch.is_complex(y) else torch.float64)
    residual = operator.forward(x) - y
    data_term = 0.5 * residual.abs().square().reshape(*residual.shape[: residual.ndim - len(operator.out_shape)], -1).sum(-1)
    coefficients = x if transform is None else transform.forward(x)
    return data_term + reg * penalty(coefficients)


def psnr_db_per_image(x: Tensor, reference: Tensor, image_ndim: int = 2, data_range: float = 1.0) -> Tensor:
    r"""Return the PSNR :math:`10\log_{10}(\text{range}^2/\text{MSE})` of each image in dB, float64.

    The MSE averages :math:`|\hat x - x|^2` over the last ``image_ndim`` dimensions, so complex
    images are compared by the modulus of their difference.
    """
    if x.shape[-image_ndim:] != reference.shape[-image_ndim:]:
        raise ValueError(f"x and reference must have the same image shape, got {tuple(x.shape)} and {tuple(reference.shape)}.")
    difference = x.to(torch.complex128 if torch.is_complex(x) else torch.float64) - reference.to(
        torch.complex128 if torch.is_complex(reference) else torch.float64
    )
    mse = difference.abs().square().mean(dim=tuple(range(-image_ndim, 0)))
    return -ratio_db(mse, torch.tensor(data_range**2, dtype=torch.float64, device=mse.device))


@dataclass
class ImageTrace:
    """Per-iteration record of an image solver run, where entry k describes the iterate after k iterations.

    Attributes:
        objective: batch mean of the objective, float64.
        psnr_db: batch mean of the per-image PSNR in dB (needs ``reference``, else empty).
        time_s: seconds elapsed since the solver started, trace bookkeeping included.
    """

    objective: list[float] = field(default_factory=list)
    psnr_db: list[float] = field(default_factory=list)
    time_s: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, list[float]]:
        return {name: list(values) for name, values in self.__dict__.items()}


class _ImageTraceRecorder:
    """Accumulate trace entries on the solver's device and move them to the host once, at the end."""

    def __init__(self, reference: Tensor | None, image_ndim: int, data_range: float, device: torch.device) -> None:
        self.reference = reference
        self.image_ndim = image_ndim
        self.data_range = data_range
        self.device = device
        self.rows: list[Tensor] = []
        self.times: list[float] = []
        self.start = time.perf_counter()

    def record(self, x: Tensor, objective: Tensor) -> None:
        values = [objective.mean()]
        if self.reference is not None:
            values.append(psnr_db_per_image(x, self.reference, self.image_ndim, self.data_range).mean())
        self.rows.append(torch.stack(values))
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.times.append(time.perf_counter() - self.start)

    def finish(self) -> ImageTrace:
        trace = ImageTrace(time_s=self.times)
        for row in torch.stack(self.rows).cpu().tolist():
            trace.objective.append(row[0])
            if self.reference is not None:
                trace.psnr_db.append(row[1])
        return trace


@dataclass
class ProximalGradientResult:
    """Final iterate, the number of iterations run, and the trace when one was requested."""

    x: Tensor
    n_iter: int
    trace: ImageTrace | None = None


def resolve_image_step_size(operator: LinearOperator, step_size: float | None) -> float:
    """Return ``step_size``, or ``1/L`` from ``operator.lipschitz_constant()`` when it is None, and reject steps outside (0, 2/L]."""
    if step_size is None:
        lipschitz = operator.lipschitz_constant()
        if lipschitz <= 0:
            raise ValueError(f"the operator's Lipschitz constant is {lipschitz}, but a step size of 1/L needs L > 0.")
        return 1.0 / lipschitz
    if not (math.isfinite(step_size) and step_size > 0):
        raise ValueError(f"step_size must be a positive finite number, got {step_size}.")
    # Without the safety margin of the default, because 2/||A||^2 is the exact limit of convergence.
    lipschitz = operator.lipschitz_constant(margin=1.0)
    if step_size > 2.0 / lipschitz:
        raise ValueError(
            f"step_size={step_size:.6g} exceeds 2/L = {2.0 / lipschitz:.6g} (L = ||A||_2^2 = {lipschitz:.6g}). "
            "Proximal gradient diverges for steps above 2/L. Pass step_size <= 1/L, or leave it as None for 1/L."
        )
    return step_size


def _starting_point(operator: LinearOperator, y: Tensor, batch_shape: torch.Size, x0: Tensor | None) -> Tensor:
    """Return a fresh copy of ``x0`` broadcast to the batch, or zeros of the operator's domain (complex for a complex domain)."""
    shape = (*batch_shape, *operator.in_shape)
    if x0 is not None:
        operator.check_input(x0, "x0")
        try:
            return x0.expand(shape).clone()
        except RuntimeError as error:
            raise ValueError(f"x0 of shape {tuple(x0.shape)} does not broadcast to the batch shape {shape} of y.") from error
    real_dtype = y.real.dtype if torch.is_complex(y) else y.dtype
    dtype = real_dtype.to_complex() if operator.complex_domain else real_dtype
    return torch.zeros(shape, dtype=dtype, device=y.device)


def _image_inner_product(u: Tensor, v: Tensor, image_ndim: int) -> Tensor:
    """Return :math:`\\operatorname{Re}\\langle u, v\\rangle` per image, keeping the image dimensions as size 1."""
    product = (u * v.conj()).real if torch.is_complex(u) else u * v
    return product.sum(dim=tuple(range(-image_ndim, 0)), keepdim=True)


def _converged(x_new: Tensor, x: Tensor, tol: float, image_ndim: int) -> bool:
    """True when the largest relative change of any image is at most ``tol``."""
    if tol <= 0:
        return False
    dims = tuple(range(-image_ndim, 0))
    change = torch.linalg.vector_norm(x_new - x, dim=dims)
    scale = torch.linalg.vector_norm(x_new, dim=dims).clamp_min(torch.finfo(change.dtype).tiny)
    return bool((change <= tol * scale).all())


def _check_options(reg: float, max_iter: int, tol: float, accelerated: bool, restart: str | None) -> None:
    if isinstance(reg, Tensor) and reg.numel() == 1:
        reg = float(reg)
    if not isinstance(reg, (int, float)) or not (math.isfinite(reg) and reg >= 0):
        raise ValueError(f"reg must be a finite number >= 0, got {reg!r}.")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 0:
        raise ValueError(f"max_iter must be an integer >= 0, got {max_iter!r}.")
    if not (math.isfinite(tol) and tol >= 0):
        raise ValueError(f"tol must be a finite number >= 0, got {tol}.")
    if restart is not None and restart not in RESTART_SCHEMES:
        raise ValueError(f"restart must be None or one of {RESTART_SCHEMES}, got {restart!r}.")
    if restart is not None and not accelerated:
        raise ValueError(f"restart={restart!r} resets the FISTA momentum, so it needs accelerated=True.")


@torch.no_grad()
def proximal_gradient(
    operator: LinearOperator,
    y: Tensor,
    prox: Prox,
    reg: float,
    *,
    step_size: float | None = None,
    max_iter: int = 100,
    accelerated: bool = True,
    restart: str | None = None,
    transform: OrthonormalTransform | None = None,
    penalty: Penalty | None = None,
    x0: Tensor | None = None,
    tol: float = 0.0,
    reference: Tensor | None = None,
    data_range: float = 1.0,
    trace: bool = False,
    progress: bool = False,
    callback: Callable[[int, Tensor], None] | None = None,
) -> ProximalGradientResult:
    r"""ISTA or FISTA for :math:`\min_x \tfrac12\|Ax - y\|^2 + \mathrm{reg}\,g(Wx)`, batched over the leading dimensions of ``y``.

    ISTA (``accelerated=False``) iterates :math:`x_{k+1} = T(x_k)` with the step :math:`T` of
    :func:`proximal_gradient_step` at :math:`\gamma` = ``step_size`` and
    :math:`\theta = \gamma\,\mathrm{reg}`. FISTA, with :math:`t_1 = 1` and :math:`z_1 = x_0`, iterates

    .. math::
        x_k = T(z_k),\quad
        t_{k+1} = \tfrac{1 + \sqrt{1 + 4t_k^2}}{2},\quad
        z_{k+1} = x_k + \tfrac{t_k - 1}{t_{k+1}}(x_k - x_{k-1}).

    For :math:`0 < \gamma \le 1/L`, :math:`L = \|A\|_2^2`, ISTA decreases the objective
    monotonically and FISTA reduces the objective gap as :math:`O(1/k^2)`. Steps up to 2/L are
    accepted, but only ISTA is guaranteed to converge with them. These rates assume an exact prox,
    and :func:`unrolled.tv.prox_tv` is an iterative inner solver, so TV-FISTA is inexact.

    The solver runs under ``torch.no_grad()``. To differentiate through iterations, call
    :func:`proximal_gradient_step` in a loop, as the unrolled networks do.

    Args:
        operator: the forward operator A; images have shape (..., *operator.in_shape).
        y: measurements of shape (..., *operator.out_shape); its leading dimensions are the batch.
        prox: ``prox(v, threshold)`` of the penalty g, such as :func:`unrolled.prox.prox_l1` or
            :func:`unrolled.tv.prox_tv` (use :func:`functools.partial` for its options).
        reg: :math:`\mathrm{reg} \ge 0`, one number for the whole batch.
        step_size: :math:`\gamma`; 1/L from ``operator.lipschitz_constant()`` when None.
        max_iter: number of iterations (the run stops earlier only when ``tol > 0``).
        accelerated: FISTA when True, ISTA when False.
        restart: adaptive restart of the FISTA momentum, decided per image after every iteration.
            ``"gradient"`` restarts when :math:`\operatorname{Re}\langle z_k - x_k, x_k - x_{k-1}\rangle > 0`,
            ``"function"`` when :math:`F(x_k) > F(x_{k-1})` (this one needs the penalty). A restart
            sets the image's :math:`t_{k+1}` to 1, so its next step starts from :math:`z_{k+1} = x_k`.
            None runs plain FISTA.
        transform: orthonormal W with ``forward`` (Wx) and ``inverse`` (:math:`W^H c`), such as
            :class:`unrolled.transforms.Wavelet2D`; None for the identity.
        penalty: g as a function of the coefficients Wx (or of x without a transform) that returns
            one value per image, for the trace and the function restart. None looks it up for the
            proxes of the library (ℓ1 for ``prox_l1``, the isotropic Neumann TV for ``prox_tv``, 0
            for projections).
        x0: starting point, broadcastable to (..., *operator.in_shape); zeros by default.
        tol: stop once every image's relative change ``‖x_{k+1} − x_k‖ / ‖x_{k+1}‖`` is at most ``tol``.
        reference: ground-truth images of shape (..., *operator.in_shape), for the PSNR column of the trace.
        data_range: peak value of the PSNR, 1 for images on the [0, 1] scale.
        trace: record an :class:`ImageTrace` (entry k is the iterate after k iterations).
        progress: show a progress bar.
        callback: called as ``callback(k, x)`` with the iterate after every iteration k (1-based).

    Raises:
        ValueError: an argument is out of range, or the penalty is needed but unknown for ``prox``.
    """
    _check_options(reg, max_iter, tol, accelerated, restart)
    reg = float(reg)
    operator.check_measurements(y)
    batch_shape = y.shape[: y.ndim - len(operator.out_shape)]
    image_ndim = len(operator.in_shape)
    if reference is not None:
        operator.check_input(reference, "reference")

    step = resolve_image_step_size(operator, step_size)
    threshold = step * reg
    x = _starting_point(operator, y, batch_shape, x0)

    needs_objective = trace or restart == "function"
    if penalty is None and needs_objective:
        penalty = default_penalty(prox, batch_shape)
        if penalty is None:
            raise ValueError(
                f"the trace and the function restart need the penalty g of prox={getattr(prox, '__name__', prox)!r}, "
                "which is not one of the library's proxes. Pass penalty=, a function of the coefficients that "
                "returns one value per image."
            )

    def objective(images: Tensor) -> Tensor:
        return composite_objective(images, y, operator, reg, penalty, transform)

    recorder = _ImageTraceRecorder(reference, image_ndim, data_range, x.device) if trace else None
    restart_shape = (*batch_shape, *([1] * image_ndim))
    t: Tensor | float = torch.ones(restart_shape, dtype=x.real.dtype, device=x.device) if restart is not None else 1.0
    x_prev = x
    x_objective = objective(x) if restart == "function" else None

    n_iter = 0
    for n_iter in tqdm(range(1, max_iter + 1), desc="FISTA" if accelerated else "ISTA", disable=not progress, leave=False):
        if recorder is not None:
            recorder.record(x, objective(x))
        if not accelerated:
            x_new = proximal_gradient_step(x, y, operator, step, prox, threshold, transform)
            x_prev, x = x, x_new
        else:
            if isinstance(t, Tensor):
                t_next = (1.0 + torch.sqrt(1.0 + 4.0 * t * t)) / 2.0
            else:
                t_next = (1.0 + math.sqrt(1.0 + 4.0 * t * t)) / 2.0
            z = x + ((t - 1.0) / t_next) * (x - x_prev)
            x_new = proximal_gradient_step(z, y, operator, step, prox, threshold, transform)
            if restart == "gradient":
                t_next = torch.where(_image_inner_product(z - x_new, x_new - x, image_ndim) > 0, 1.0, t_next)
            elif restart == "function":
                new_objective = objective(x_new)
                increased = (new_objective > x_objective).reshape(restart_shape)
                t_next = torch.where(increased, 1.0, t_next)
                x_objective = new_objective
            x_prev, x, t = x, x_new, t_next
        if callback is not None:
            callback(n_iter, x)
        if _converged(x, x_prev, tol, image_ndim):
            break
    if recorder is not None:
        recorder.record(x, objective(x))
    return ProximalGradientResult(x=x, n_iter=n_iter, trace=recorder.finish() if recorder is not None else None)
