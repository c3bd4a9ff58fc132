r"""What SGD, SVRG, SAGA and SARAH share: sampling, step sizes, the proximal step, the epoch loop and its trace.

Each method estimates the gradient of the data term :math:`\frac1n\sum_i \tilde x_i g_i^\top` of a
:class:`~unrolled.problems.finite_sum.FiniteSum` from a mini-batch B of b indices drawn i.i.d. with
replacement, with probabilities :math:`p_i` (uniform, or proportional to :math:`L_i`, "importance
sampling"). Each draw j carries the weight :math:`1/(n p_j)`, which keeps every estimate unbiased.
The ℓ2 term of the objective is added exactly, and the ℓ1 term enters through the prox, so one step is

.. math:: W^+ = \operatorname{prox}_{\gamma\,\mathrm{reg}\|\cdot\|_1}\big(W - \gamma\,(\hat g + \mathrm{reg\_l2}\,W)\big).

Step sizes are measured against the expected smoothness of the mini-batch estimate. For draws with
replacement it is :math:`L_b = L_s/b + (1 - 1/b)\,L + \mathrm{reg\_l2}`, where L is the smoothness
of the full data gradient and :math:`L_s = \max_i L_i/(n p_i)` that of one draw (Gower, Loizou, Qian,
Sailanbayev, Shulgin, Richtárik, "SGD: general analysis and improved rates", ICML 2019).

Two backends run the draws of an epoch. ``torch`` calls :meth:`StochasticMethod.step` once per
draw, on any device. ``numba`` hands the whole epoch of draws to a compiled CPU kernel of
:mod:`unrolled.solvers.numba_kernels`, through :meth:`StochasticMethod.run_draws`. The draws, the
epoch structure, the step sizes, the trace and the variance measurement are the same on both, so
one seed gives the same iterates up to rounding.
"""

from __future__ import annotations

import abc
import copy
import importlib
import logging
import math
import time
from dataclasses import dataclass, field

import torch
from torch import Tensor

from unrolled.problems.finite_sum import FiniteSum

log = logging.getLogger(__name__)

SAMPLINGS = ("uniform", "importance")
BACKENDS = ("auto", "torch", "numba")
NUMBA_DTYPES = (torch.float32, torch.float64)
# The fallback of "auto" to torch is logged once per process, not at every solver call.
_fallback_logged = False


def resolve_backend(backend: str, problem: FiniteSum) -> str:
    """Return ``"torch"`` or ``"numba"``, the backend that runs the draws of ``problem``.

    ``auto`` picks numba for a CPU problem in float32 or float64 when numba imports, and torch
    otherwise (always on CUDA). When numba is missing it logs why, once per process. ``numba``
    raises when the kernels cannot run: ``ImportError`` without numba, ``ValueError`` for another
    device or dtype.
    """
    global _fallback_logged
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}.")
    if backend == "torch":
        return "torch"
    if problem.device.type != "cpu" or problem.dtype not in NUMBA_DTYPES:
        if backend == "numba":
            raise ValueError(
                f"backend='numba' runs on CPU in float32 or float64, but the problem is {problem.dtype} on {problem.device}. "
                "Use backend='torch' (or 'auto', which picks torch there)."
            )
        return "torch"
    try:
        importlib.import_module("unrolled.solvers.numba_kernels")
    except ImportError as error:
        if backend == "numba":
            raise ImportError(
                f"backend='numba' needs numba, which failed to import ({error}). "
                "Install it with pip install 'numba>=0.59', or pass backend='torch'."
            ) from error
        if not _fallback_logged:
            log.info("numba failed to import (%s), so the stochastic solvers use the torch backend.", error)
            _fallback_logged = True
        return "torch"
    return "numba"


class Sampler:
    """Draws mini-batches of indices i.i.d. with replacement, with the weights :math:`1/(n p_i)` of unbiased estimates.

    Indices come from a CPU generator, one call per epoch, so the same seed gives the same
    sequence on every device and for dense and sparse storage of the same data.
    """

    def __init__(self, problem: FiniteSum, batch_size: int, sampling: str, seed: int) -> None:
        n = problem.n_samples
        if not isinstance(batch_size, int) or isinstance(batch_size, bool):
            raise ValueError(f"batch_size must be an integer, got {batch_size!r}.")
        if not 1 <= batch_size <= n:
            raise ValueError(f"batch_size must lie in [1, n_samples = {n}], got {batch_size}.")
        if sampling not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}.")
        self.n_samples = n
        self.batch_size = batch_size
        self.device = problem.device
        self.dtype = problem.dtype
        self.generator = torch.Generator(device="cpu").manual_seed(seed)
        lipschitz = problem.sample_lipschitz().to("cpu", torch.float64)
        if sampling == "importance" and float(lipschitz.sum()) > 0:
            self.probabilities: Tensor | None = lipschitz / lipschitz.sum()
            scaled = torch.where(self.probabilities > 0, lipschitz / (n * self.probabilities), torch.zeros_like(lipschitz))
        else:
            self.probabilities = None
            scaled = lipschitz
        self.draw_lipschitz = float(scaled.max())

    def reseeded(self, seed: int) -> Sampler:
        """Return a sampler with the same distribution and its own stream, seeded by ``seed``."""
        other = copy.copy(self)
        other.generator = torch.Generator(device="cpu").manual_seed(seed)
        return other

    def draw(self, n_iter: int) -> tuple[Tensor, Tensor]:
        """Return ``n_iter`` mini-batches: indices (n_iter, b) and their weights :math:`1/(n p_i)` (n_iter, b)."""
        size = n_iter * self.batch_size
        if self.probabilities is None:
            index = torch.randint(self.n_samples, (size,), generator=self.generator)
            weights = torch.ones(size, dtype=self.dtype)
        else:
            index = torch.multinomial(self.probabilities, size, replacement=True, generator=self.generator)
            weights = (1.0 / (self.n_samples * self.probabilities[index])).to(self.dtype)
        shape = (n_iter, self.batch_size)
        return index.view(shape).to(self.device), weights.view(shape).to(self.device)


def batch_smoothness(problem: FiniteSum, sampler: Sampler) -> float:
    r"""Return :math:`L_b = L_s/b + (1 - 1/b)L + \mathrm{reg\_l2}`, the smoothness that sets the step sizes (module docstring)."""
    b = sampler.batch_size
    data_lipschitz = problem.lipschitz() - problem.reg_l2
    return sampler.draw_lipschitz / b + (1.0 - 1.0 / b) * data_lipschitz + problem.reg_l2


def resolve_step_size(step_size: float | None, smoothness: float, default_factor: float, method: str) -> float:
    r"""Return ``step_size``, or ``default_factor`` / :math:`L_b`; reject steps outside (0, 2/:math:`L_b`].

    Above :math:`2/L_b` no method here can be stable: a single sampled gradient step can already
    increase the objective. Below it, only the method's own analysis gives a guarantee (roughly
    :math:`1/(3L_b)` for SAGA and SVRG); larger steps within the range can still diverge, for
    instance SAGA with importance sampling on the diabetes Lasso from :math:`1/L_b`. A run logs a
    warning when an epoch ends above the starting objective, and stops with ``FloatingPointError``
    once the objective or the iterate is no longer finite.
    """
    if step_size is None:
        return default_factor / smoothness
    if not (step_size > 0 and step_size < float("inf")):
        raise ValueError(f"step_size must be a positive finite number, got {step_size}.")
    if step_size > 2.0 / smoothness:
        raise ValueError(
            f"{method}: step_size={step_size:.6g} is above the stable range 2/L_b = {2.0 / smoothness:.6g} "
            f"(L_b = {smoothness:.6g}, the smoothness of the mini-batch gradient), where even one mini-batch step can increase the objective. "
            f"Use step_size <= {default_factor / smoothness:.6g} (the default), or leave it as None."
        )
    return step_size


def prepare_run(
    problem: FiniteSum,
    W0: Tensor | None,
    *,
    step_size: float | None,
    default_factor: float,
    batch_size: int,
    sampling: str,
    seed: int,
    method: str,
) -> tuple[Sampler, float, Tensor]:
    """Return the sampler, the checked step size and the starting point (zeros when ``W0`` is None) of a run."""
    sampler = Sampler(problem, batch_size, sampling, seed)
    step = resolve_step_size(step_size, batch_smoothness(problem, sampler), default_factor, method)
    W = problem.zeros() if W0 is None else W0.to(problem.dtype).clone()
    problem.check_iterate(W)
    return sampler, step, W


def batch_gradient(rows: Tensor, derivatives: Tensor, weights: Tensor) -> Tensor:
    r"""Return the mini-batch estimate :math:`\frac1b\sum_{j\in B} \tilde x_j g_j^\top/(n p_j)` from rows (b, d) and derivatives (b, k)."""
    # Leading dimensions are instances solved side by side (unrolled networks train on batches of problems).
    return rows.transpose(-1, -2) @ (derivatives * weights[..., None]) / rows.shape[-2]


def proximal_step(problem: FiniteSum, W: Tensor, direction: Tensor, step_size: float | Tensor) -> Tensor:
    r"""Return :math:`\operatorname{prox}_{\gamma\,\mathrm{reg}\|\cdot\|_1}(W - \gamma(d + \mathrm{reg\_l2}\,W))` for the data-gradient estimate d.

    The one update of every method here, classical and unrolled alike.
    """
    return problem.prox(W - step_size * (direction + problem.l2_gradient(W)), step_size)


@dataclass
class StochasticTrace:
    """Per-epoch record of a run; entry 0 describes the starting point.

    Attributes:
        epoch: epochs done (mini-batch draws divided by n, full-gradient passes not counted).
        objective: F(W) in float64.
        suboptimality: F(W) - f_star, when ``f_star`` was given (else empty).
        grad_evals: per-sample gradients computed so far, full-gradient passes included.
        time_s: solver seconds so far; the trace bookkeeping (objective, variance) is not counted.
        variance: mean over fresh draws of the squared Frobenius distance between the method's
            gradient estimate and the full data gradient, at the current iterate and state (when
            ``variance_draws > 0``, else empty).
    """

    epoch: list[float] = field(default_factory=list)
    objective: list[float] = field(default_factory=list)
    suboptimality: list[float] = field(default_factory=list)
    grad_evals: list[int] = field(default_factory=list)
    time_s: list[float] = field(default_factory=list)
    variance: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, list[float]]:
        return {name: list(values) for name, values in self.__dict__.items()}


@dataclass
class StochasticResult:
    """Final iterate W (dim, k), the epochs run, the trace when one was requested, and the backend that ran the draws."""

    W: Tensor
    n_epochs: int
    trace: StochasticTrace | None = None
    backend: str = "torch"


class StochasticMethod(abc.ABC):
    """State and update of one method; :func:`run_epochs` drives it.

    Subclasses implement :meth:`estimate` (the gradient estimate of the data term, without side
    effects) and :meth:`step` (one update, which may change the method's memory), and may refresh
    their memory in :meth:`start_epoch`. The numba variants override :meth:`run_draws` to apply a
    whole epoch of draws in a compiled kernel, updating their state tensors in place.
    """

    name: str
    backend: str = "torch"
    # Per-sample gradients one draw costs: 2 where the estimate also evaluates a reference point (SVRG, SARAH).
    evals_per_draw: int = 1

    def __init__(self, problem: FiniteSum, W: Tensor, step_size: float) -> None:
        self.problem = problem
        self.W = W
        self.step_size = step_size
        self.grad_evals = 0

    def start_epoch(self, epoch: int) -> None:
        """Refresh the method's memory at the start of an epoch (SVRG and SARAH: a full gradient)."""

    @abc.abstractmethod
    def estimate(self, index: Tensor, weights: Tensor) -> Tensor:
        """Return the estimate of the data gradient at the current W from the mini-batch, leaving the state unchanged."""

    @abc.abstractmethod
    def step(self, index: Tensor, weights: Tensor, iteration: int) -> None:
        """Apply one update with the mini-batch ``index`` (b,) and its weights (b,)."""

    def run_draws(self, index: Tensor, weights: Tensor, first_iteration: int) -> None:
        """Apply one update per row of ``index`` (n_iter, b) and ``weights`` (n_iter, b), row t being iteration first_iteration + t."""
        for t in range(index.shape[0]):
            self.step(index[t], weights[t], first_iteration + t)

    def full_data_gradient(self, W: Tensor) -> Tensor:
        """Return the exact data gradient at W and count its n per-sample gradients."""
        self.grad_evals += self.problem.n_samples
        return self.problem.data_gradient(W)


class NumbaDraws:
    """Mixin that makes a method its numba variant, listed first among the bases: ``class _NumbaSAGA(NumbaDraws, _SAGA)``.

    It stores the kernels module and the problem's arrays, and keeps W contiguous and detached,
    because the kernels update W in place through a numpy view. The variant overrides
    :meth:`StochasticMethod.run_draws` with a kernel call.
    """

    backend = "numba"

    def __init__(self, problem: FiniteSum, W: Tensor, step_size: float, *args) -> None:
        self.kernels = importlib.import_module("unrolled.solvers.numba_kernels")
        super().__init__(problem, W.detach().contiguous(), step_size, *args)
        self.arrays = self.kernels.KernelProblem.from_problem(problem)


@torch.no_grad()
def run_epochs(
    method: StochasticMethod,
    sampler: Sampler,
    *,
    max_epochs: int,
    tol: float,
    f_star: float | None,
    trace: bool,
    variance_draws: int,
    variance_seed: int = 12345,
) -> StochasticResult:
    r"""Run ``max_epochs`` epochs of n/b mini-batch steps each, stopping early once F - f_star <= tol.

    ``tol`` needs ``f_star``. The objective is evaluated once per epoch when a trace or a
    tolerance needs it. The first epoch that ends above the starting objective then logs a
    warning, because the step is probably too large for the data.
    """
    if tol > 0 and f_star is None:
        raise ValueError(f"tol={tol} needs f_star (the optimal value): the run stops once F - f_star <= tol. Pass f_star, or tol=0.")
    if max_epochs < 0:
        raise ValueError(f"max_epochs must be >= 0, got {max_epochs}.")
    if variance_draws < 0:
        raise ValueError(f"variance_draws must be >= 0, got {variance_draws}.")
    problem = method.problem
    iterations_per_epoch = max(1, problem.n_samples // sampler.batch_size)
    record = StochasticTrace() if trace else None
    # The variance draws have their own stream, so measuring does not change the run.
    variance_sampler = sampler.reseeded(variance_seed) if variance_draws else None
    watch_objective = trace or (tol > 0 and f_star is not None)
    elapsed = 0.0
    start_objective: float | None = None
    warned = False

    def check(epoch: int) -> bool:
        """Record the trace entry of ``epoch``, and return True when the tolerance is met."""
        nonlocal start_objective, warned
        if not watch_objective:
            return False
        objective = problem.objective(method.W)
        if not math.isfinite(objective):
            raise FloatingPointError(
                f"{method.name} diverged by epoch {epoch}: the objective is {objective}. Lower step_size (now {method.step_size:.6g})."
            )
        if start_objective is None:
            start_objective = objective
        elif objective > start_objective and not warned:
            warned = True
            log.warning(
                "%s: the objective after epoch %d, %.6g, is above its starting value %.6g; step_size %.6g is probably too large "
                "for these data (the defaults are in unrolled.solvers.stochastic).",
                method.name, epoch, objective, start_objective, method.step_size,
            )
        if record is not None:
            record.epoch.append(float(epoch))
            record.objective.append(objective)
            if f_star is not None:
                record.suboptimality.append(objective - f_star)
            record.grad_evals.append(method.grad_evals)
            record.time_s.append(elapsed)
            if variance_sampler is not None:
                record.variance.append(_estimator_variance(method, variance_sampler, variance_draws))
        return f_star is not None and tol > 0 and objective - f_star <= tol

    n_epochs = 0
    if not check(0):
        for n_epochs in range(1, max_epochs + 1):
            start = _synchronised_clock(problem.device)
            method.start_epoch(n_epochs - 1)
            index, weights = sampler.draw(iterations_per_epoch)
            method.run_draws(index, weights, (n_epochs - 1) * iterations_per_epoch)
            method.grad_evals += iterations_per_epoch * sampler.batch_size * method.evals_per_draw
            elapsed += _synchronised_clock(problem.device) - start
            if not bool(torch.isfinite(method.W).all()):
                raise FloatingPointError(
                    f"{method.name} diverged in epoch {n_epochs}: the iterate contains NaN or infinite values. "
                    f"Lower step_size (now {method.step_size:.6g})."
                )
            if check(n_epochs):
                break
    return StochasticResult(W=method.W, n_epochs=n_epochs, trace=record, backend=method.backend)


def _synchronised_clock(device: torch.device) -> float:
    """Return ``time.perf_counter()`` after the device has finished its queued work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _estimator_variance(method: StochasticMethod, sampler: Sampler, n_draws: int) -> float:
    """Return the mean squared distance between ``n_draws`` estimates and the full data gradient at the current state."""
    exact = method.problem.data_gradient(method.W)
    index, weights = sampler.draw(n_draws)
    distances = [float(((method.estimate(index[t], weights[t]) - exact) ** 2).sum()) for t in range(n_draws)]
    return sum(distances) / n_draws
