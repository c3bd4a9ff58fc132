r"""Stochastic bilevel solvers on :class:`~unrolled.bilevel.problems.LinearModelBilevel` problems: SOBA, SABA and stocBiO.

SOBA and SABA (Dagréou et al., 2022, "A framework for bilevel optimization that enables stochastic
and global variance reduction algorithms") move the inner variable z, the linear-system variable v
and the hyperparameters h together, one step each per iteration, along

.. math::
    D_z = \nabla_z G(z, h),\qquad
    D_v = \nabla^2_{zz}G(z, h)\,v + \nabla_z F(z, h),\qquad
    D_h = \nabla_h F(z, h) + \nabla^2_{hz}G(z, h)\,v ,

so that v tracks :math:`-[\nabla^2_{zz}G]^{-1}\nabla_z F` and :math:`D_h` tracks the hypergradient.
The updates are :math:`z \leftarrow z - \rho D_z`, :math:`v \leftarrow v - \rho D_v`,
:math:`h \leftarrow \Pi(h - \gamma D_h)`, with Π the problem's projection onto valid hyperparameters.

- **SOBA** estimates each direction from a mini-batch of training samples (for G) and one of
  validation samples (for F). The noise does not vanish at the solution, so convergence needs
  decreasing steps :math:`\rho_t = \rho_0 (1 + t/T)^{-2/5}` and :math:`\gamma_t = \gamma_0 (1 + t/T)^{-3/5}`,
  the rates of its analysis. The scale T (``decay_scale``) keeps the first T steps near
  :math:`\rho_0, \gamma_0`. With fixed steps, h stalls at a noise floor.
- **SABA** replaces each estimate by SAGA's (Defazio et al., 2014): a table keeps the last value of
  every sample's gradient, Hessian-vector product and cross derivative, and the estimate is the
  batch's change plus the table mean. Its variance vanishes at the solution, so fixed steps converge
  (at a linear rate under strong convexity and the PL condition).
- **stocBiO** (Ji, Yang and Liang, 2021) is a double loop: each outer step runs ``inner_steps``
  steps of SGD on z (warm-started), estimates :math:`[\nabla^2_{zz}G]^{-1}\nabla_z F` by a Neumann
  series over ``neumann_steps`` independent mini-batches, and steps h along the estimated hypergradient.

The ℓ2 term of G is deterministic and enters every direction exactly. Only the per-sample loss
terms are sampled, through the coefficient oracles of :class:`LinearModelBilevel`, so SABA's tables
hold k numbers per sample for the gradient and the product, and one for the cross derivative.
Batches are drawn without replacement within a batch from a seeded generator. The inner problem
must be smooth, so an ℓ1 inner term raises ``ValueError``.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from unrolled.bilevel.problems import LinearModelBilevel
from unrolled.bilevel.trace import BilevelResult, Recorder


# Default inner step relative to 1/L, the inverse Lipschitz constant of the full inner gradient.
DEFAULT_INNER_STEP_SCALE = 0.5


def soba(
    problem: LinearModelBilevel,
    *,
    n_iter: int,
    batch_size: int = 64,
    inner_step: float | None = None,
    outer_step: float = 1.0,
    decreasing: bool = True,
    decay_scale: float = 100.0,
    hyper0: Tensor | None = None,
    seed: int = 0,
    eval_every: int | None = None,
    hypergradient_norm: bool = False,
) -> BilevelResult:
    """Run SOBA for ``n_iter`` iterations (see the module docstring).

    Args:
        problem: a smooth linear-model bilevel problem.
        n_iter: iterations, each one step of z, v and h.
        batch_size: training and validation samples per estimate.
        inner_step: ρ (ρ₀ with ``decreasing``) of z and v; ``0.5 / L`` at the initial h when None.
        outer_step: γ (γ₀ with ``decreasing``) of h.
        decreasing: use ρ₀ (1 + t/T)^(-2/5) and γ₀ (1 + t/T)^(-3/5); False keeps both fixed.
        decay_scale: T, the iterations over which the steps stay near their initial values.
        hyper0: starting h; ``problem.initial_hyper()`` when None.
        seed: seed of the batches.
        eval_every: score h every this many iterations (and at the start and end); n_iter // 20 when None.
        hypergradient_norm: also record ‖dF/dh‖ at each scored point.
    """
    if not decay_scale > 0:
        raise ValueError(f"decay_scale must be > 0, got {decay_scale}.")
    schedule = functools.partial(_decreasing, decay_scale=decay_scale) if decreasing else _fixed
    method = "soba" if decreasing else "soba-fixed"
    return _joint_run(problem, _MinibatchDirections(problem), method, schedule, **_shared(locals()))


def saba(
    problem: LinearModelBilevel,
    *,
    n_iter: int,
    batch_size: int = 64,
    inner_step: float | None = None,
    outer_step: float = 1.0,
    hyper0: Tensor | None = None,
    seed: int = 0,
    eval_every: int | None = None,
    hypergradient_norm: bool = False,
) -> BilevelResult:
    """Run SABA with fixed steps for ``n_iter`` iterations; arguments as in :func:`soba`.

    The tables are filled at the starting point by one pass over the training and validation
    samples, counted in the oracle calls.
    """
    return _joint_run(problem, _SagaDirections(problem), "saba", _fixed, **_shared(locals()))


def stocbio(
    problem: LinearModelBilevel,
    *,
    n_iter: int,
    batch_size: int = 64,
    inner_steps: int = 10,
    neumann_steps: int = 10,
    inner_step: float | None = None,
    neumann_step: float | None = None,
    outer_step: float = 1.0,
    hyper0: Tensor | None = None,
    seed: int = 0,
    eval_every: int | None = None,
    hypergradient_norm: bool = False,
) -> BilevelResult:
    r"""Run stocBiO for ``n_iter`` outer iterations (see the module docstring).

    Args:
        inner_steps: SGD steps on z per outer iteration (T).
        neumann_steps: terms of the Neumann series after the first (Q), one mini-batch each.
        inner_step: α of the SGD steps; ``0.5 / L`` when None.
        neumann_step: η of the Neumann series :math:`\eta\sum_q (I - \eta H)^q b`; ``1 / L`` when None.
        Other arguments as in :func:`soba`.
    """
    _check_smooth(problem)
    _check_counts(n_iter, batch_size, problem)
    hyper = _start(problem, hyper0)
    inner_step = _inner_step(problem, hyper, inner_step)
    neumann_step = _inner_step(problem, hyper, neumann_step, "neumann_step", default_scale=1.0)
    _check_outer_step(outer_step)
    if inner_steps < 1 or neumann_steps < 0:
        raise ValueError(f"inner_steps must be >= 1 and neumann_steps >= 0, got {inner_steps} and {neumann_steps}.")
    draw = _Batches(problem, batch_size, seed)
    recorder = Recorder(problem, hypergradient_norm=hypergradient_norm)
    eval_every = _eval_every(eval_every, n_iter)
    z = recorder.score(0, hyper)
    recorder.start()
    for t in range(1, n_iter + 1):
        for _ in range(inner_steps):
            index = draw.train()
            weights_z, _, _ = problem.regulariser_parts(z, hyper, z)
            z = z - inner_step * (problem.expand(index, problem.gradient_coefficients(z, hyper, index)) + weights_z)
        index = draw.val()
        rhs = problem.expand(index, problem.outer_coefficients(z, index), split="val")
        term, total = rhs, rhs.clone()
        for _ in range(neumann_steps):
            index = draw.train()
            _, reg_product, _ = problem.regulariser_parts(z, hyper, term)
            term = term - neumann_step * (problem.expand(index, problem.hvp_coefficients(z, hyper, term, index)) + reg_product)
            total = total + term
        v = neumann_step * total
        index = draw.train()
        _, _, cross = problem.regulariser_parts(z, hyper, v)
        coefficients = problem.cross_coefficients(z, hyper, v, index)
        if coefficients is not None:
            cross = cross + problem.expand_cross(index, coefficients, hyper)
        # F does not depend on h for these problems, so the hypergradient estimate is -∇²_{hz}G v.
        hyper = problem.project_hyper(hyper + outer_step * cross)
        recorder.oracle_calls += batch_size * (inner_steps + neumann_steps + 2)
        if t % eval_every == 0 or t == n_iter:
            recorder.score(t, hyper)
    recorder.stop()
    return BilevelResult(hyper=hyper, z=z, trace=recorder.trace, method="stocbio")


class _Batches:
    """Seeded mini-batches of training and validation indices, distinct within a batch."""

    def __init__(self, problem: LinearModelBilevel, batch_size: int, seed: int) -> None:
        # Drawn on the CPU and moved, so that a seed gives the same batches on every device.
        self.generator = torch.Generator().manual_seed(seed)
        self.n_train, self.n_val = problem.n_samples, problem.n_val
        self.batch_size = batch_size
        self.device = problem.device

    def train(self) -> Tensor:
        return torch.randperm(self.n_train, generator=self.generator)[: self.batch_size].to(self.device)

    def val(self) -> Tensor:
        return torch.randperm(self.n_val, generator=self.generator)[: min(self.batch_size, self.n_val)].to(self.device)


class _MinibatchDirections:
    """SOBA's unbiased mini-batch estimates of (D_z, D_v, D_h)."""

    def __init__(self, problem: LinearModelBilevel) -> None:
        self.problem = problem

    def setup(self, z: Tensor, v: Tensor, hyper: Tensor) -> int:
        return 0

    def __call__(self, z: Tensor, v: Tensor, hyper: Tensor, train: Tensor, val: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        problem = self.problem
        reg_gradient, reg_product, cross = problem.regulariser_parts(z, hyper, v)
        direction_z = problem.expand(train, problem.gradient_coefficients(z, hyper, train)) + reg_gradient
        direction_v = (
            problem.expand(train, problem.hvp_coefficients(z, hyper, v, train))
            + reg_product
            + problem.expand(val, problem.outer_coefficients(z, val), split="val")
        )
        coefficients = problem.cross_coefficients(z, hyper, v, train)
        if coefficients is not None:
            cross = cross + problem.expand_cross(train, coefficients, hyper)
        return direction_z, direction_v, cross


class _SagaDirections:
    """SABA's SAGA estimates: per-sample tables of coefficients and their running means."""

    def __init__(self, problem: LinearModelBilevel) -> None:
        self.problem = problem

    def setup(self, z: Tensor, v: Tensor, hyper: Tensor) -> int:
        """Fill the tables at the starting point with one pass; return the oracle calls spent."""
        problem = self.problem
        everyone = torch.arange(problem.n_samples, device=problem.device)
        validation = torch.arange(problem.n_val, device=problem.device)
        self.gradient = problem.gradient_coefficients(z, hyper, everyone)
        self.product = problem.hvp_coefficients(z, hyper, v, everyone)
        self.cross = problem.cross_coefficients(z, hyper, v, everyone)
        self.outer = problem.outer_coefficients(z, validation)
        self.gradient_mean = problem.expand(everyone, self.gradient)
        self.product_mean = problem.expand(everyone, self.product)
        self.outer_mean = problem.expand(validation, self.outer, split="val")
        self.cross_mean = None if self.cross is None else problem.expand_cross(everyone, self.cross, hyper)
        return (3 if problem.per_sample_hyper else 2) * problem.n_samples + problem.n_val

    def __call__(self, z: Tensor, v: Tensor, hyper: Tensor, train: Tensor, val: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        problem = self.problem
        reg_gradient, reg_product, cross = problem.regulariser_parts(z, hyper, v)
        direction_z = self._estimate("gradient", train, problem.gradient_coefficients(z, hyper, train)) + reg_gradient
        direction_v = (
            self._estimate("product", train, problem.hvp_coefficients(z, hyper, v, train))
            + reg_product
            + self._estimate("outer", val, problem.outer_coefficients(z, val), split="val")
        )
        coefficients = problem.cross_coefficients(z, hyper, v, train)
        if coefficients is not None:
            change = problem.expand_cross(train, coefficients - self.cross[train], hyper)
            cross = cross + change + self.cross_mean
            self.cross_mean = self.cross_mean + change * (train.numel() / problem.n_samples)
            self.cross[train] = coefficients
        return direction_z, direction_v, cross

    def _estimate(self, name: str, index: Tensor, coefficients: Tensor, split: str = "train") -> Tensor:
        """Return SAGA's estimate (batch change plus table mean), then store the new coefficients."""
        problem = self.problem
        table, mean = getattr(self, name), getattr(self, f"{name}_mean")
        change = problem.expand(index, coefficients - table[index], split=split)
        estimate = change + mean
        size = problem.n_samples if split == "train" else problem.n_val
        setattr(self, f"{name}_mean", mean + change * (index.numel() / size))
        table[index] = coefficients
        return estimate


def _joint_run(
    problem: LinearModelBilevel,
    directions,
    method: str,
    schedule,
    *,
    n_iter: int,
    batch_size: int,
    inner_step: float | None,
    outer_step: float,
    hyper0: Tensor | None,
    seed: int,
    eval_every: int | None,
    hypergradient_norm: bool,
) -> BilevelResult:
    """Run the single loop of SOBA and SABA, which differ only in their direction estimates and step schedules."""
    _check_smooth(problem)
    _check_counts(n_iter, batch_size, problem)
    hyper = _start(problem, hyper0)
    inner_step = _inner_step(problem, hyper, inner_step)
    _check_outer_step(outer_step)
    draw = _Batches(problem, batch_size, seed)
    recorder = Recorder(problem, hypergradient_norm=hypergradient_norm)
    eval_every = _eval_every(eval_every, n_iter)

    z = recorder.score(0, hyper)
    v = torch.zeros_like(z)
    recorder.start()
    recorder.oracle_calls += directions.setup(z, v, hyper)
    per_iteration = batch_size * (3 if problem.per_sample_hyper else 2) + min(batch_size, problem.n_val)

    for t in range(1, n_iter + 1):
        direction_z, direction_v, direction_h = directions(z, v, hyper, draw.train(), draw.val())
        rho, gamma = schedule(inner_step, outer_step, t)
        z = z - rho * direction_z
        v = v - rho * direction_v
        hyper = problem.project_hyper(hyper - gamma * direction_h)
        recorder.oracle_calls += per_iteration

        if not (torch.isfinite(hyper).all() and torch.isfinite(z).all()):
            raise FloatingPointError(
                f"{method} diverged at iteration {t} (non-finite iterate) with inner step {inner_step:.3g} and "
                f"outer step {outer_step:.3g}. Lower the steps."
            )
        if t % eval_every == 0 or t == n_iter:
            recorder.score(t, hyper)
    recorder.stop()
    return BilevelResult(hyper=hyper, z=z, trace=recorder.trace, method=method)


def _fixed(inner_step: float, outer_step: float, t: int) -> tuple[float, float]:
    return inner_step, outer_step


def _decreasing(inner_step: float, outer_step: float, t: int, decay_scale: float) -> tuple[float, float]:
    # The rates of SOBA's analysis (Dagréou et al., 2022, Theorem 1), t^(-2/5) and t^(-3/5) for t >> T.
    ratio = 1.0 + t / decay_scale
    return inner_step * ratio ** (-0.4), outer_step * ratio ** (-0.6)


def _shared(arguments: dict) -> dict:
    """Select the keyword arguments that SOBA and SABA pass on to :func:`_joint_run` unchanged."""
    names = ("n_iter", "batch_size", "inner_step", "outer_step", "hyper0", "seed", "eval_every", "hypergradient_norm")
    return {name: arguments[name] for name in names}


def _start(problem: LinearModelBilevel, hyper0: Tensor | None) -> Tensor:
    hyper = problem.initial_hyper() if hyper0 is None else torch.as_tensor(hyper0, dtype=problem.dtype, device=problem.device).clone()
    problem.check_hyper(hyper)
    return hyper


def _inner_step(
    problem: LinearModelBilevel, hyper: Tensor, inner_step: float | None, name: str = "inner_step", default_scale: float = DEFAULT_INNER_STEP_SCALE
) -> float:
    """Return a step of the inner or linear-system variable: ``default_scale / L``, or the given one after checking it."""
    lipschitz = problem.inner_lipschitz(hyper)
    if inner_step is None:
        return default_scale / lipschitz
    # Gradient steps on an L-smooth function (and on the linear system of its Hessian) diverge beyond 2/L.
    if not 0 < inner_step <= 2 / lipschitz:
        raise ValueError(
            f"{name} must lie in (0, 2/L] = (0, {2 / lipschitz:.4g}] at the starting hyperparameters, got {inner_step}. "
            f"Leave it None for {default_scale:g}/L."
        )
    return float(inner_step)


def _check_outer_step(outer_step: float) -> None:
    if not (math.isfinite(outer_step) and outer_step > 0):
        raise ValueError(f"outer_step must be a finite number > 0, got {outer_step}.")


def _eval_every(eval_every: int | None, n_iter: int) -> int:
    if eval_every is None:
        return max(1, n_iter // 20)
    if eval_every < 1:
        raise ValueError(f"eval_every must be >= 1, got {eval_every}.")
    return eval_every


def _check_smooth(problem: LinearModelBilevel) -> None:
    if not isinstance(problem, LinearModelBilevel):
        raise TypeError(
            f"the stochastic solvers need a LinearModelBilevel problem (per-sample oracles), got {type(problem).__name__}; "
            "use unrolled.bilevel.full_batch.implicit_gradient_descent for other problems."
        )
    if problem.inner_l1(problem.initial_hyper()) is not None:
        raise ValueError(
            f"{type(problem).__name__} has an ℓ1 inner term, and SOBA, SABA and stocBiO need a smooth inner problem; "
            "use unrolled.bilevel.full_batch.implicit_gradient_descent, which differentiates on the support."
        )


def _check_counts(n_iter: int, batch_size: int, problem: LinearModelBilevel) -> None:
    if n_iter < 1:
        raise ValueError(f"n_iter must be >= 1, got {n_iter}.")
    if not 1 <= batch_size <= problem.n_samples:
        raise ValueError(f"batch_size must lie in 1..{problem.n_samples} (the training samples), got {batch_size}.")
