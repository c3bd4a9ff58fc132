r"""Scaled-form ADMM: the shared update step, the solver loop, and ADMM for the Lasso.

Problem, for each sample of a batch:

.. math:: \min_{x, z}\; f(x) + g(z) \quad \text{s.t.}\quad Kx - z = c,

with the augmented Lagrangian in scaled form (scaled dual :math:`u = y_{\text{dual}}/\rho`). One
iteration is

.. math::
    x^{k+1} = \arg\min_x f(x) + \tfrac\rho2\|Kx - c - (z^k - u^k)\|_2^2, \qquad
    z^{k+1} = \operatorname{prox}_{g/\rho}(Kx^{k+1} - c + u^k), \qquad
    u^{k+1} = u^k + \eta\,(Kx^{k+1} - c - z^{k+1}),

with :math:`\eta = 1` for classical ADMM. ``z`` and ``u`` are tuples of blocks (one per split
term, for example the image gradient and the data residual), and :math:`K` stacks one linear map
per block. :func:`admm_step` is the one place where this update is written: the classical solvers
here and in :mod:`unrolled.solvers.admm_imaging` and the unrolled ADMM-Net of
:mod:`unrolled.layers.admm_net` all call it.

The solver loop reports the primal residual :math:`r = Kx - c - z` and the dual residual
:math:`s = \rho K^H(z^{k+1} - z^k)`, and stops once, for every sample,

.. math:: \|r\| \le \sqrt p\,\epsilon_{\text{abs}} + \epsilon_{\text{rel}}\max(\|Kx\|, \|z\|, \|c\|), \qquad
          \|s\| \le \sqrt n\,\epsilon_{\text{abs}} + \epsilon_{\text{rel}}\,\rho\,\|K^H u\|,

where p counts the entries of all blocks and n those of x. With residual balancing, ρ is
multiplied by τ = 2 when :math:`\|r\| > \mu\|s\|` and divided by τ when :math:`\|s\| > \mu\|r\|`
(μ = 10), and u is divided (multiplied) by the same factor so that the unscaled dual :math:`\rho u`
stays the same. Each sample keeps its own ρ.

NOTE: the convergence proof of ADMM holds for a ρ that stops changing after finitely many
iterations. Residual balancing here may change ρ in every iteration, which works in practice
(Boyd et al., section 3.4.1) but is not covered by that proof.

Reference: Boyd, Parikh, Chu, Peleato, Eckstein, "Distributed optimization and statistical learning
via the alternating direction method of multipliers", Found. Trends Mach. Learn. 3(1), 2011
(scaled form, section 3.1.1; stopping rule, section 3.3.1; residual balancing, section 3.4.1;
Lasso, section 6.4).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor
from tqdm.auto import tqdm

from unrolled.metrics import psnr_db
from unrolled.objectives import lasso_objective
from unrolled.operators import check_measurements, check_operator
from unrolled.prox import prox_l1
from unrolled.solvers.ista import check_reg

logger = logging.getLogger(__name__)

Blocks = tuple[Tensor, ...]

#: residual balancing changes ρ when one residual exceeds the other by this ratio (μ of Boyd et al.)
RESIDUAL_BALANCING_RATIO = 10.0
#: factor by which residual balancing multiplies or divides ρ (τ of Boyd et al.)
RESIDUAL_BALANCING_FACTOR = 2.0


@dataclass
class ADMMIterate:
    """State after one ADMM iteration: x, the constraint images :math:`Kx - c`, z and the scaled dual u."""

    x: Tensor
    constraint: Blocks
    z: Blocks
    u: Blocks


def admm_step(
    x: Tensor,
    z: Blocks,
    u: Blocks,
    x_update: Callable[[Blocks, Tensor], Tensor],
    transform: Callable[[Tensor], Blocks],
    prox: Callable[[Blocks], Blocks],
    dual_step: Tensor | float = 1.0,
) -> ADMMIterate:
    r"""Apply one scaled-form ADMM iteration (the module docstring gives the update).

    The problem enters only through three callables, so the same step serves the classical solvers
    (a fixed f, g and K, with ρ bound into the callables) and ADMM-Net (learned filters, penalties
    and nonlinearities).

    Args:
        x: current estimate, passed to ``x_update`` as the warm start of an iterative solve.
        z: split variables, one tensor per block.
        u: scaled dual variables, with the shapes of ``z``.
        x_update: ``(v, x) -> argmin_x f(x) + ρ/2 ‖Kx − c − v‖²`` with :math:`v = z - u`.
        transform: ``x -> Kx − c``, one tensor per block.
        prox: ``w -> prox_{g/ρ}(w)`` with :math:`w = Kx - c + u`, one tensor per block.
        dual_step: :math:`\eta`, the step of the dual update, broadcastable to every block; 1 for
            classical ADMM, learned per filter in ADMM-Net.
    """
    v = tuple(z_block - u_block for z_block, u_block in zip(z, u))
    x = x_update(v, x)
    constraint = transform(x)
    z = prox(tuple(k_block + u_block for k_block, u_block in zip(constraint, u)))
    u = tuple(u_block + dual_step * (k_block - z_block) for u_block, k_block, z_block in zip(u, constraint, z))
    return ADMMIterate(x=x, constraint=constraint, z=z, u=u)


@dataclass
class ADMMSplitting:
    """One problem in the form that :func:`run_admm` solves; every callable acts on a batch.

    ``rho`` below is a tensor of the batch shape (one penalty per sample); the callables broadcast
    it against their blocks.

    Attributes:
        x_update: ``(v, x, rho) -> x⁺``, the x-minimisation for :math:`v = z - u`, warm-started at x.
        transform: ``x -> Kx − c`` per block.
        adjoint: ``blocks -> K^H blocks``, summed over the blocks, the shape of x.
        prox: ``(w, rho) -> z``, the proximal map of :math:`g/\\rho` per block.
        objective: ``x -> f(x) + g(Kx − c)`` per sample, summed in float64, the quantity the trace reports.
        offset: :math:`c` per block, None where it is 0.
    """

    x_update: Callable[[Blocks, Tensor, Tensor], Tensor]
    transform: Callable[[Tensor], Blocks]
    adjoint: Callable[[Blocks], Tensor]
    prox: Callable[[Blocks, Tensor], Blocks]
    objective: Callable[[Tensor], Tensor]
    offset: tuple[Tensor | None, ...]


@dataclass
class ADMMTrace:
    """Per-iteration record of an ADMM run; entry k describes the state after k + 1 iterations.

    Batch values are means over the samples, and the residuals are Euclidean norms per sample.

    Attributes:
        primal_residual: :math:`\\|Kx - c - z\\|`.
        dual_residual: :math:`\\|\\rho K^H(z^{k+1} - z^k)\\|`.
        rho: the penalty used in the iteration (before any residual-balancing update that follows it).
        objective: objective at x, in float64.
        psnr_db: PSNR in dB of x against the reference, over the whole batch, with a data range of
            1 (images on the [0, 1] scale). Complex images use the modulus. The list stays empty
            without a reference.
        time_s: seconds since the solver started, trace bookkeeping included.
    """

    primal_residual: list[float] = field(default_factory=list)
    dual_residual: list[float] = field(default_factory=list)
    rho: list[float] = field(default_factory=list)
    objective: list[float] = field(default_factory=list)
    psnr_db: list[float] = field(default_factory=list)
    time_s: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, list[float]]:
        return {name: list(values) for name, values in self.__dict__.items()}


@dataclass
class ADMMResult:
    """Final state of an ADMM run.

    ``rho``, ``converged``, ``primal_residual`` and ``dual_residual`` have the batch shape: the
    final penalty of each sample, whether it met the stopping rule, and its last residual norms.
    ``n_iter`` counts the iterations run.
    """

    x: Tensor
    z: Blocks
    u: Blocks
    rho: Tensor
    n_iter: int
    converged: Tensor
    primal_residual: Tensor
    dual_residual: Tensor
    trace: ADMMTrace | None = None


def check_penalty(rho: float) -> None:
    """Raise ``ValueError`` unless ``rho`` is a positive finite number."""
    if isinstance(rho, bool) or not isinstance(rho, (int, float)) or not (math.isfinite(rho) and rho > 0):
        raise ValueError(f"rho must be a positive finite number, got {rho!r}.")


def check_stopping(max_iter: int, abs_tol: float, rel_tol: float) -> None:
    """Raise ``ValueError`` unless ``max_iter >= 0`` and both tolerances are >= 0."""
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 0:
        raise ValueError(f"max_iter must be an integer >= 0, got {max_iter!r}.")
    if not abs_tol >= 0:
        raise ValueError(f"abs_tol must be >= 0, got {abs_tol}.")
    if not rel_tol >= 0:
        raise ValueError(f"rel_tol must be >= 0, got {rel_tol}.")


def expand_per_sample(value: Tensor, block: Tensor) -> Tensor:
    """Reshape a tensor of the batch shape so that it broadcasts against ``block`` (batch shape first)."""
    return value.reshape(*value.shape, *([1] * (block.ndim - value.ndim)))


def _sample_norm(blocks: Blocks | Tensor, batch_ndim: int) -> Tensor:
    """Return the Euclidean norm of each sample over all blocks, shape (batch...)."""
    blocks = (blocks,) if isinstance(blocks, Tensor) else blocks
    squares = [block.abs().square().sum(dim=tuple(range(batch_ndim, block.ndim))) for block in blocks]
    return torch.stack(squares).sum(0).sqrt()


def _sample_size(blocks: Blocks | Tensor, batch_ndim: int) -> int:
    blocks = (blocks,) if isinstance(blocks, Tensor) else blocks
    return sum(math.prod(block.shape[batch_ndim:]) for block in blocks)


class _TraceRecorder:
    """Keep the trace rows on the solver's device and move them to the host once, at the end."""

    def __init__(self, objective: Callable[[Tensor], Tensor], reference: Tensor | None, device: torch.device) -> None:
        self.objective = objective
        self.reference = None if reference is None else _magnitude(reference)
        self.device = device
        self.rows: list[Tensor] = []
        self.times: list[float] = []
        self.start = time.perf_counter()

    def record(self, x: Tensor, primal: Tensor, dual: Tensor, rho: Tensor) -> None:
        values = [primal.mean(), dual.mean(), rho.mean(), self.objective(x).mean()]
        values = [value.to(torch.float64) for value in values]
        if self.reference is not None:
            values.append(psnr_db(_magnitude(x), self.reference.expand_as(_magnitude(x))).to(values[0].device))
        self.rows.append(torch.stack(values))
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.times.append(time.perf_counter() - self.start)

    def finish(self) -> ADMMTrace:
        trace = ADMMTrace(time_s=self.times)
        for row in torch.stack(self.rows).cpu().tolist() if self.rows else []:
            trace.primal_residual.append(row[0])
            trace.dual_residual.append(row[1])
            trace.rho.append(row[2])
            trace.objective.append(row[3])
            if self.reference is not None:
                trace.psnr_db.append(row[4])
        return trace


def _magnitude(image: Tensor) -> Tensor:
    return image.abs() if torch.is_complex(image) else image


@torch.no_grad()
def run_admm(
    splitting: ADMMSplitting,
    x0: Tensor,
    rho: float,
    batch_shape: torch.Size,
    *,
    max_iter: int,
    abs_tol: float,
    rel_tol: float,
    residual_balancing: bool = False,
    reference: Tensor | None = None,
    trace: bool = False,
    progress: bool = False,
    name: str = "ADMM",
    callback: Callable[[int, Tensor], None] | None = None,
) -> ADMMResult:
    """Run scaled-form ADMM on ``splitting`` from ``x0``, with z⁰ = Kx⁰ − c and u⁰ = 0.

    The loop calls :func:`admm_step` and implements the stopping rule and residual balancing of the
    module docstring. It runs under ``torch.no_grad()``; to differentiate through iterations,
    unroll :func:`admm_step` as :class:`unrolled.layers.admm_net.ADMMNet` does.

    Args:
        splitting: the problem.
        x0: starting point, shape (*batch_shape, *signal_shape).
        rho: initial penalty ρ > 0, the same for every sample.
        batch_shape: the leading dimensions of x that index samples.
        max_iter: maximum number of iterations.
        abs_tol: :math:`\\epsilon_{\\text{abs}}` of the stopping rule.
        rel_tol: :math:`\\epsilon_{\\text{rel}}` of the stopping rule; with both at 0 the run stops
            only at ``max_iter`` (or at exactly zero residuals).
        residual_balancing: adapt ρ per sample after every iteration.
        reference: ground-truth image for the PSNR column of the trace.
        trace: record an :class:`ADMMTrace`.
        progress: show a progress bar.
        name: label of the progress bar and of the log lines.
        callback: called as ``callback(k, x)`` with the iterate after every iteration k (1-based).
            It serves measurements that the trace does not make, and its time counts in the trace's clock.
    """
    check_penalty(rho)
    check_stopping(max_iter, abs_tol, rel_tol)
    batch_ndim = len(batch_shape)
    rho_per_sample = torch.full(batch_shape, float(rho), dtype=x0.real.dtype, device=x0.device)
    recorder = _TraceRecorder(splitting.objective, reference, x0.device) if trace else None

    x = x0
    z = splitting.transform(x)
    u = tuple(torch.zeros_like(block) for block in z)
    constraint_size = _sample_size(z, batch_ndim)
    signal_size = math.prod(x.shape[batch_ndim:])
    offsets = tuple(c for c in splitting.offset if c is not None)
    offset_norm = torch.zeros(batch_shape, dtype=rho_per_sample.dtype, device=x.device)
    if offsets:
        offset_norm = _sample_norm(offsets, batch_ndim).expand(batch_shape)

    primal = dual = torch.full(batch_shape, math.inf, dtype=rho_per_sample.dtype, device=x.device)
    converged = torch.zeros(batch_shape, dtype=torch.bool, device=x.device)
    n_iter = 0
    for n_iter in tqdm(range(1, max_iter + 1), desc=name, disable=not progress, leave=False):
        current_rho = rho_per_sample
        iterate = admm_step(
            x, z, u,
            x_update=lambda v, x_warm, rho=current_rho: splitting.x_update(v, x_warm, rho),
            transform=splitting.transform,
            prox=lambda w, rho=current_rho: splitting.prox(w, rho),
        )
        z_change = tuple(new - old for new, old in zip(iterate.z, z))
        x, z, u = iterate.x, iterate.z, iterate.u

        primal = _sample_norm(tuple(k - zb for k, zb in zip(iterate.constraint, z)), batch_ndim)
        dual = current_rho * _sample_norm(splitting.adjoint(z_change), batch_ndim)
        image_norm = _sample_norm(
            tuple(k if c is None else k + c for k, c in zip(iterate.constraint, splitting.offset)), batch_ndim
        )
        primal_tol = math.sqrt(constraint_size) * abs_tol + rel_tol * torch.maximum(
            torch.maximum(image_norm, _sample_norm(z, batch_ndim)), offset_norm
        )
        dual_tol = math.sqrt(signal_size) * abs_tol + rel_tol * current_rho * _sample_norm(splitting.adjoint(u), batch_ndim)
        converged = (primal <= primal_tol) & (dual <= dual_tol)
        if recorder is not None:
            recorder.record(x, primal, dual, current_rho)
        if callback is not None:
            callback(n_iter, x)
        if bool(converged.all()):
            break

        if residual_balancing:
            rho_per_sample, u = _balance_residuals(rho_per_sample, u, primal, dual)

    logger.debug("%s stopped after %d iterations, %d of %d samples converged", name, n_iter, int(converged.sum()), converged.numel())
    return ADMMResult(
        x=x, z=z, u=u, rho=rho_per_sample, n_iter=n_iter, converged=converged,
        primal_residual=primal, dual_residual=dual, trace=recorder.finish() if recorder is not None else None,
    )


def _balance_residuals(rho: Tensor, u: Blocks, primal: Tensor, dual: Tensor) -> tuple[Tensor, Blocks]:
    """Return ρ and u after one residual-balancing update; ρu, the unscaled dual, is unchanged."""
    factor = torch.ones_like(rho)
    factor = torch.where(primal > RESIDUAL_BALANCING_RATIO * dual, RESIDUAL_BALANCING_FACTOR, factor)
    factor = torch.where(dual > RESIDUAL_BALANCING_RATIO * primal, 1.0 / RESIDUAL_BALANCING_FACTOR, factor)
    u = tuple(block / expand_per_sample(factor, block) for block in u)
    return rho * factor, u


class _LassoXUpdate:
    r"""Solve :math:`(A^\top A + \rho I)x = A^\top y + \rho v` with one Cholesky factor per distinct ρ, cached.

    When A has fewer rows than columns the factor is that of the smaller :math:`AA^\top + \rho I`
    and the matrix-inversion lemma
    :math:`(A^\top A + \rho I)^{-1} = \rho^{-1}(I - A^\top(AA^\top + \rho I)^{-1}A)` applies it.
    Residual balancing changes ρ by factors of 2, so a run needs a few distinct factors.
    """

    def __init__(self, A: Tensor, y: Tensor) -> None:
        self.A = A
        self.Aty = y @ A
        self.wide = A.shape[0] < A.shape[1]
        self.gram = A @ A.T if self.wide else A.T @ A
        self.factors: dict[float, Tensor] = {}

    def factor(self, rho: float) -> Tensor:
        if rho not in self.factors:
            eye = torch.eye(self.gram.shape[0], dtype=self.gram.dtype, device=self.gram.device)
            self.factors[rho] = torch.linalg.cholesky(self.gram + rho * eye)
        return self.factors[rho]

    def __call__(self, v: Blocks, x: Tensor, rho: Tensor) -> Tensor:
        rhs = self.Aty + expand_per_sample(rho, x) * v[0]
        flat_rhs = rhs.reshape(-1, rhs.shape[-1])
        flat_rho = rho.expand(x.shape[:-1]).reshape(-1)
        solution = torch.empty_like(flat_rhs)
        for value in torch.unique(flat_rho).tolist():
            rows = flat_rho == value
            solution[rows] = self._solve(flat_rhs[rows], value)
        return solution.reshape(rhs.shape)

    def _solve(self, rhs: Tensor, rho: float) -> Tensor:
        factor = self.factor(rho)
        if not self.wide:
            return torch.cholesky_solve(rhs.T, factor).T
        correction = torch.cholesky_solve((rhs @ self.A.T).T, factor).T @ self.A
        return (rhs - correction) / rho


def admm_lasso(
    A: Tensor,
    y: Tensor,
    reg: Tensor | float,
    rho: float = 1.0,
    *,
    max_iter: int = 1000,
    abs_tol: float = 1e-6,
    rel_tol: float = 1e-5,
    residual_balancing: bool = False,
    x0: Tensor | None = None,
    trace: bool = False,
    progress: bool = False,
) -> ADMMResult:
    r"""ADMM for the Lasso :math:`\min_x \tfrac12\|Ax - y\|_2^2 + \mathrm{reg}\,\|x\|_1`, batched over ``y``.

    Splitting :math:`x - z = 0` with :math:`f(x) = \tfrac12\|Ax - y\|^2`, :math:`g(z) = \mathrm{reg}\|z\|_1`:

    .. math::
        x^{k+1} = (A^\top A + \rho I)^{-1}(A^\top y + \rho(z^k - u^k)), \quad
        z^{k+1} = \eta_{\mathrm{reg}/\rho}(x^{k+1} + u^k), \quad
        u^{k+1} = u^k + x^{k+1} - z^{k+1},

    with :math:`\eta` the soft-threshold. The x-update uses a cached Cholesky factor (see
    :class:`_LassoXUpdate`). ``result.x`` is the last x; ``result.z[0]`` is the last z, which has
    exact zeros, and the two agree to the primal tolerance.

    Args:
        A: matrix of shape (m, n); its dtype and device set those of the computation.
        y: measurements of shape (..., m).
        reg: :math:`\mathrm{reg} \ge 0`; a float, or a tensor of shape (..., 1) for one value per sample.
        rho: initial penalty ρ > 0.
        max_iter: maximum number of iterations.
        abs_tol: :math:`\epsilon_{\text{abs}}` of the stopping rule (module docstring).
        rel_tol: :math:`\epsilon_{\text{rel}}` of the stopping rule.
        residual_balancing: adapt ρ per sample (μ = 10, τ = 2).
        x0: starting point of shape (..., n); zeros by default.
        trace: record an :class:`ADMMTrace`.
        progress: show a progress bar.

    Raises:
        ValueError: ``reg`` is negative, ``rho`` is not positive, or the shapes of A, y and x0 do
            not match.
    """
    check_operator(A)
    check_measurements(y, A)
    check_reg(reg)
    check_penalty(rho)
    reg = torch.as_tensor(reg, dtype=A.dtype, device=A.device)
    batch_shape = torch.broadcast_shapes(y.shape[:-1], reg.shape[:-1])
    if x0 is None:
        x0 = torch.zeros(*batch_shape, A.shape[1], dtype=A.dtype, device=A.device)
    elif x0.shape[-1:] != A.shape[1:] or torch.broadcast_shapes(x0.shape[:-1], batch_shape) != batch_shape:
        raise ValueError(f"x0 must have shape {(*batch_shape, A.shape[1])} (batch shape of y, n = A.shape[1]), got {tuple(x0.shape)}.")
    x0 = x0.to(A.dtype).expand(*batch_shape, A.shape[1]).clone()
    y = y.to(A.dtype).expand(*batch_shape, A.shape[0])

    def prox(w: Blocks, rho_per_sample: Tensor) -> Blocks:
        return (prox_l1(w[0], reg / expand_per_sample(rho_per_sample, w[0])),)

    splitting = ADMMSplitting(
        x_update=_LassoXUpdate(A, y),
        transform=lambda x: (x,),
        adjoint=lambda blocks: blocks[0],
        prox=prox,
        objective=lambda x: lasso_objective(x, y, A, reg),
        offset=(None,),
    )
    return run_admm(
        splitting, x0, rho, batch_shape, max_iter=max_iter, abs_tol=abs_tol, rel_tol=rel_tol,
        residual_balancing=residual_balancing, trace=trace, progress=progress, name="ADMM-Lasso",
    )
