r"""ISTA and FISTA for the Lasso, batched over many measurement vectors, and the shared ISTA step.

Problem, for each row y of a batch:

.. math:: \min_x \tfrac12\|Ax - y\|_2^2 + \mathrm{reg}\,\|x\|_1 .

:func:`ista_step` is the one place where the update rule is written; the classical solvers below
and the unrolled layers in :mod:`unrolled.layers.lista` both call it.

References:
    Daubechies, Defrise, De Mol, "An iterative thresholding algorithm for linear inverse problems with
    a sparsity constraint", Comm. Pure Appl. Math., 2004 (ISTA).
    Beck, Teboulle, "A fast iterative shrinkage-thresholding algorithm for linear inverse problems",
    SIAM J. Imaging Sci., 2009 (FISTA).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

from unrolled.objectives import lasso_objective
from unrolled.operators import check_measurements, check_operator, lipschitz_constant, power_iteration
from unrolled.prox import prox_l1_, prox_l1_support_selection
from unrolled.solvers.trace import Trace, TraceRecorder


def ista_step(
    x: Tensor,
    residual: Tensor,
    W: Tensor,
    step_size: Tensor | float,
    threshold: Tensor | float,
    bypass_fraction: float = 0.0,
    *,
    out: Tensor | None = None,
) -> Tensor:
    r"""Apply one (generalised) ISTA update :math:`x^+ = \eta_\theta(x - \gamma\,W^\top r)` with :math:`r = Ax - y`.

    Classical ISTA uses :math:`W = A`, :math:`\gamma = 1/L` and :math:`\theta = \mathrm{reg}/L`.
    LISTA-CP learns W per layer (with :math:`\gamma = 1`), ALISTA fixes an analytic W and learns
    :math:`\gamma` and :math:`\theta` per layer.

    Args:
        x: current estimate, shape (..., n).
        residual: :math:`Ax - y`, shape (..., m).
        W: matrix of shape (m, n) applied as :math:`W^\top r`.
        step_size: :math:`\gamma`, broadcastable to ``x``.
        threshold: :math:`\theta`, broadcastable to ``x``.
        bypass_fraction: fraction of entries per sample that skip the threshold (support selection,
            see :func:`unrolled.prox.prox_l1_support_selection`); 0 gives plain soft-thresholding.
        out: contiguous buffer of the shape of the result, for callers outside autograd (the
            classical solvers). The update is then computed in place, with the same operations in
            the same order, so the values equal those of the call without ``out`` (see
            :func:`unrolled.prox.prox_l1_` for the sign of zero). ``residual`` must have the batch
            shape of ``out``, and ``out`` must not share memory with ``x`` or ``residual``.
    """
    if out is None:
        return prox_l1_support_selection(x - step_size * (residual @ W), threshold, bypass_fraction)

    if out.data_ptr() in (x.data_ptr(), residual.data_ptr()):
        raise ValueError("out must not share memory with x or residual: ista_step reads both after writing out.")
    if residual.shape[:-1] != out.shape[:-1]:
        raise ValueError(
            f"residual must have the batch shape of out, got residual {tuple(residual.shape)} and out {tuple(out.shape)}."
        )
    matmul_into(out, residual, W).mul_(step_size)
    torch.sub(x, out, out=out)
    if bypass_fraction != 0.0:
        return out.copy_(prox_l1_support_selection(out, threshold, bypass_fraction))
    return prox_l1_(out, threshold)


def matmul_into(out: Tensor, x: Tensor, M: Tensor) -> Tensor:
    """Write ``x @ M`` into the contiguous buffer ``out`` and return ``out``.

    ``x`` may have any number of batch dimensions. They are folded into one matrix product, as
    ``torch.matmul`` does for a 2-D ``M``, so the rounding is that of ``x @ M``. A 1-D ``x`` works
    too, where ``torch.matmul`` with ``out=`` would resize the buffer.
    """
    torch.mm(x.reshape(-1, x.shape[-1]), M, out=out.view(-1, out.shape[-1]))
    return out


@dataclass
class SolverResult:
    """Final iterate, the number of iterations run, and the trace when one was requested."""

    x: Tensor
    n_iter: int
    trace: Trace | None = None


def check_reg(reg: Tensor | float) -> None:
    """Raise ``ValueError`` unless every entry of ``reg`` is finite and non-negative."""
    reg_tensor = torch.as_tensor(reg)
    if not torch.isfinite(reg_tensor).all() or (reg_tensor < 0).any():
        raise ValueError(f"reg must be finite and >= 0, got {reg}.")


def resolve_step_size(A: Tensor, step_size: float | None) -> float:
    """Return ``step_size``, or ``1/L`` when it is None; reject steps outside (0, 2/L]."""
    if step_size is None:
        return 1.0 / lipschitz_constant(A)
    if not (math.isfinite(step_size) and step_size > 0):
        raise ValueError(f"step_size must be a positive finite number, got {step_size}.")
    # The bound uses the unmargined estimate: 2/||A||_2^2 is the exact limit of convergence.
    exact_lipschitz = power_iteration(A.detach().to(torch.float64))
    if step_size > 2.0 / exact_lipschitz:
        raise ValueError(
            f"step_size={step_size:.6g} exceeds 2/L = {2.0 / exact_lipschitz:.6g} "
            f"(L = ||A||_2^2 = {exact_lipschitz:.6g}); ISTA diverges for steps above 2/L. "
            "Pass step_size <= 1/L, or leave it as None for 1/L."
        )
    return step_size


def _prepare(A: Tensor, y: Tensor, reg: Tensor | float, x0: Tensor | None, max_iter: int) -> tuple[Tensor, Tensor, Tensor]:
    """Check the arguments and return ``reg`` as a tensor, the starting point x and its image ``A x``.

    x and ``A x`` already have the batch shape of the iterates (the broadcast of the batch shapes
    of ``y``, ``x0`` and ``reg``), so that the solvers can write every iterate into buffers
    allocated once. ``A x`` is computed at the shape of ``x0`` before the broadcast, so that it
    rounds as the first product of a solver that broadcasts as it goes. A non-contiguous ``x0``
    is copied to the contiguous layout of the buffers first.
    """
    check_operator(A)
    check_measurements(y, A)
    check_reg(reg)
    if max_iter < 0:
        raise ValueError(f"max_iter must be >= 0, got {max_iter}.")
    reg = torch.as_tensor(reg, dtype=A.dtype, device=A.device)

    batch_shapes = [y.shape[:-1], reg.shape[:-1]] + ([] if x0 is None else [x0.shape[:-1]])
    batch_shape = torch.broadcast_shapes(*batch_shapes)
    if x0 is None:
        x = torch.zeros(*batch_shape, A.shape[1], dtype=A.dtype, device=A.device)
        return reg, x, x @ A.T
    x0 = x0.contiguous()
    image = (x0 @ A.T).expand(*batch_shape, A.shape[0]).contiguous()
    return reg, x0.expand(*batch_shape, A.shape[1]).clone(), image


def _solver_threshold(step: float, reg: Tensor) -> Tensor | float:
    """Return the threshold ``step · reg``, as a Python float when it is one value (the fast form of clamp takes floats)."""
    threshold = step * reg
    return threshold.item() if threshold.numel() == 1 else threshold


def _converged(x_new: Tensor, x: Tensor, tol: float) -> bool:
    """True when the largest relative change of any sample is at most ``tol``."""
    if tol <= 0:
        return False
    change = torch.linalg.vector_norm(x_new - x, dim=-1)
    scale = torch.linalg.vector_norm(x_new, dim=-1).clamp_min(torch.finfo(x.dtype).tiny)
    return bool((change <= tol * scale).all())


@torch.no_grad()
def ista(
    A: Tensor,
    y: Tensor,
    reg: Tensor | float,
    *,
    step_size: float | None = None,
    max_iter: int = 1000,
    tol: float = 0.0,
    x0: Tensor | None = None,
    x_true: Tensor | None = None,
    trace: bool = False,
    progress: bool = False,
) -> SolverResult:
    r"""ISTA (proximal gradient) for the Lasso, batched over the leading dimensions of ``y``.

    Iterates :math:`x_{k+1} = \eta_{\gamma\,\mathrm{reg}}(x_k - \gamma A^\top(Ax_k - y))`, which
    decreases the objective monotonically for :math:`0 < \gamma \le 1/L` and converges for
    :math:`\gamma < 2/L`, :math:`L = \|A\|_2^2`.

    The solver runs under ``torch.no_grad()`` and writes the iterates into buffers allocated once,
    so its result carries no autograd graph. To differentiate through iterations, stack the layers
    of :mod:`unrolled.layers.lista`, which call the same :func:`ista_step`.

    Args:
        A: operator of shape (m, n); its dtype and device set those of the computation.
        y: measurements of shape (..., m).
        reg: :math:`\mathrm{reg} \ge 0`; a float, or a tensor of shape (..., 1) for one value per sample
            (for example a grid of values solved in one batch).
        step_size: :math:`\gamma`; 1/L from power iteration when None.
        max_iter: number of iterations (the run stops earlier only when ``tol > 0``).
        tol: stop once every sample's relative change ``‖x_{k+1} − x_k‖ / ‖x_{k+1}‖`` is at most ``tol``.
        x0: starting point of shape (..., n); zeros by default.
        x_true: ground truth of shape (..., n), needed for the NMSE columns of the trace.
        trace: record a :class:`~unrolled.solvers.trace.Trace` (entry k is the iterate after k iterations).
        progress: show a progress bar.
    """
    reg, x, residual = _prepare(A, y, reg, x0, max_iter)
    step = resolve_step_size(A, step_size)
    threshold = _solver_threshold(step, reg)
    recorder = TraceRecorder(x_true, A.device) if trace else None

    # Two iterate buffers alternate and the residual has its own, so the loop allocates nothing.
    x_next = torch.empty_like(x)
    n_iter = 0
    for n_iter in tqdm(range(1, max_iter + 1), desc="ISTA", disable=not progress, leave=False):
        # The residual buffer enters the loop containing A x0, computed by _prepare.
        if n_iter > 1:
            matmul_into(residual, x, A.T)
        residual.sub_(y)
        if recorder is not None:
            recorder.record(x, lasso_objective(x, y, A, reg, residual))
        x_new = ista_step(x, residual, A, step, threshold, out=x_next)
        if _converged(x_new, x, tol):
            x = x_new
            break
        x, x_next = x_new, x
    if recorder is not None:
        recorder.record(x, lasso_objective(x, y, A, reg))
    return SolverResult(x=x, n_iter=n_iter, trace=recorder.finish() if recorder is not None else None)


@torch.no_grad()
def fista(
    A: Tensor,
    y: Tensor,
    reg: Tensor | float,
    *,
    step_size: float | None = None,
    max_iter: int = 1000,
    tol: float = 0.0,
    x0: Tensor | None = None,
    x_true: Tensor | None = None,
    trace: bool = False,
    progress: bool = False,
) -> SolverResult:
    r"""FISTA for the Lasso, batched over the leading dimensions of ``y``.

    With :math:`t_1 = 1`, :math:`z_1 = x_0`:

    .. math::
        x_k = \eta_{\gamma\,\mathrm{reg}}(z_k - \gamma A^\top(Az_k - y)),\quad
        t_{k+1} = \tfrac{1 + \sqrt{1 + 4t_k^2}}{2},\quad
        z_{k+1} = x_k + \tfrac{t_k - 1}{t_{k+1}}(x_k - x_{k-1}).

    The objective gap falls as :math:`O(1/k^2)` for :math:`0 < \gamma \le 1/L`; larger steps (up to
    the 2/L that is accepted for ISTA) have no guarantee. :math:`Az_k` is formed from :math:`Ax_k`
    and :math:`Ax_{k-1}` by linearity, so one iteration costs two products with A, as in ISTA, and
    the objective of every :math:`x_k` comes for free. Arguments, and the absence of an autograd
    graph, are those of :func:`ista`.
    """
    reg, x, Ax = _prepare(A, y, reg, x0, max_iter)
    step = resolve_step_size(A, step_size)
    threshold = _solver_threshold(step, reg)
    recorder = TraceRecorder(x_true, A.device) if trace else None

    x_prev, Ax_prev = x.clone(), Ax.clone()
    z, residual = torch.empty_like(x), torch.empty_like(Ax)
    t = 1.0
    n_iter = 0
    for n_iter in tqdm(range(1, max_iter + 1), desc="FISTA", disable=not progress, leave=False):
        if recorder is not None:
            recorder.record(x, lasso_objective(x, y, A, reg, Ax - y))
        t_next = (1.0 + math.sqrt(1.0 + 4.0 * t * t)) / 2.0
        momentum = (t - 1.0) / t_next

        # In place, in the order of z = x + momentum·(x − x_prev) and Az − y = Ax + momentum·(Ax − Ax_prev) − y.
        torch.sub(x, x_prev, out=z).mul_(momentum).add_(x)
        torch.sub(Ax, Ax_prev, out=residual).mul_(momentum).add_(Ax).sub_(y)

        # x_prev and Ax_prev are not needed any more, so the new iterate and its image overwrite them.
        x_new = ista_step(z, residual, A, step, threshold, out=x_prev)
        Ax_new = matmul_into(Ax_prev, x_new, A.T)
        x_prev, Ax_prev = x, Ax
        x, Ax, t = x_new, Ax_new, t_next
        if _converged(x, x_prev, tol):
            break
    if recorder is not None:
        recorder.record(x, lasso_objective(x, y, A, reg, Ax - y))
    return SolverResult(x=x, n_iter=n_iter, trace=recorder.finish() if recorder is not None else None)
