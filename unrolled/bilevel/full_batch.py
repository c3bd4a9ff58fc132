"""Full-batch bilevel baselines: implicit-gradient descent, grid search and random search.

:func:`implicit_gradient_descent` is the deterministic baseline for the stochastic solvers. It
follows HOAG (Pedregosa, 2016), but with exact solves. Each step solves the inner problem to a
tolerance, warm-started from the previous solution. It then computes the implicit hypergradient by
conjugate gradient, warm-started from the previous adjoint, and steps h. By default a backtracking
line search on the outer value sets the step. The stochastic solvers reject an ℓ1 inner term, so
this is the method for ℓ1 inner problems, whose hypergradient lives on the support of the inner
solution.

:func:`grid_search` and :func:`random_search` score candidate hyperparameters at their exact inner
solutions. They need no derivative, and their cost grows with the number of candidates, not with the
dimension of h. That is why they serve a single weight, not one weight per feature or sample.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from unrolled.bilevel.hypergradient import implicit_hypergradient
from unrolled.bilevel.problems import BilevelProblem, LinearModelBilevel
from unrolled.bilevel.trace import BilevelResult, Recorder

# Maximum number of halvings of the outer step in the line search, after which the step is taken anyway.
MAX_HALVINGS = 30


def _sample_count(problem: BilevelProblem) -> int:
    return problem.n_samples if isinstance(problem, LinearModelBilevel) else 1


@torch.no_grad()
def implicit_gradient_descent(
    problem: BilevelProblem,
    *,
    n_iter: int,
    outer_step: float = 1.0,
    line_search: bool = True,
    hyper0: Tensor | None = None,
    inner_tol: float = 1e-9,
    tol: float = 1e-8,
    eval_every: int = 1,
    hypergradient_norm: bool = False,
) -> BilevelResult:
    """Run projected gradient descent on h with implicit hypergradients (see the module docstring).

    Args:
        problem: any bilevel problem, with a smooth or an ℓ1 inner problem.
        n_iter: number of outer steps.
        outer_step: step size on h. With ``line_search``, it is the first step tried. The step is
            halved until the outer value decreases enough (Armijo condition with constant 1e-4), at most
            ``MAX_HALVINGS`` times. It is doubled for the next iteration when the first step tried
            was accepted.
        line_search: use the backtracking line search. Without it, every step is ``outer_step``.
        hyper0: starting h, or ``problem.initial_hyper()`` when None.
        inner_tol: inner-residual tolerance of each inner solve.
        tol: relative-residual tolerance of each linear system.
        eval_every: score h every ``eval_every`` iterations and after the last one.
        hypergradient_norm: record ‖dF/dh‖ at the scored points.
    """
    if n_iter < 1:
        raise ValueError(f"n_iter must be >= 1, got {n_iter}.")
    hyper = problem.initial_hyper() if hyper0 is None else hyper0.clone()
    problem.check_hyper(hyper)
    recorder = Recorder(problem, hypergradient_norm=hypergradient_norm)
    n = _sample_count(problem)
    recorder.score(0, hyper)
    recorder.start()
    solution = problem.solve_inner(hyper, tol=inner_tol)
    adjoint = None
    step = outer_step
    for t in range(1, n_iter + 1):
        result = implicit_hypergradient(problem, hyper, solution.z, tol=tol, inner_tol=10 * inner_tol, adjoint0=adjoint)
        adjoint = result.adjoint
        recorder.oracle_calls += n * (solution.n_oracles + result.n_products + 2)
        gradient = result.gradient
        candidate = problem.project_hyper(hyper - step * gradient)
        trial = problem.solve_inner(candidate, solution.z, tol=inner_tol)
        recorder.oracle_calls += n * trial.n_oracles
        if line_search:
            halvings = 0
            while float(problem.outer(trial.z, candidate)) > result.value - 1e-4 * float(((hyper - candidate) * gradient).sum()):
                if halvings == MAX_HALVINGS:
                    break
                step /= 2
                halvings += 1
                candidate = problem.project_hyper(hyper - step * gradient)
                trial = problem.solve_inner(candidate, solution.z, tol=inner_tol)
                recorder.oracle_calls += n * trial.n_oracles
            if halvings == 0:
                step *= 2
        hyper, solution = candidate, trial
        if t % eval_every == 0 or t == n_iter:
            recorder.score(t, hyper)
    recorder.stop()
    return BilevelResult(hyper=hyper, z=solution.z, trace=recorder.trace, method="implicit-gd")


@torch.no_grad()
def grid_search(problem: BilevelProblem, grid: Tensor, *, inner_tol: float = 1e-9) -> BilevelResult:
    """Score every row of ``grid`` (n_points, n_hyper) in order and return the best.

    The inner solve of each point starts from the previous point's solution, so an ordered grid
    (a regularisation path) is cheap. The trace has one row per point, in the grid's order.
    """
    grid = torch.as_tensor(grid, dtype=problem.initial_hyper().dtype)
    if grid.ndim != 2 or grid.shape[0] == 0:
        raise ValueError(f"grid must have shape (n_points, n_hyper) with n_points >= 1, got {tuple(grid.shape)}.")
    for point in grid:
        problem.check_hyper(point)
    recorder = Recorder(problem)
    n = _sample_count(problem)
    best, best_value, best_z = None, math.inf, None
    z = None
    for index, point in enumerate(grid):
        recorder.start()
        solution = problem.solve_inner(point, z, tol=inner_tol)
        recorder.stop()
        recorder.oracle_calls += n * solution.n_oracles
        z = recorder.score(index + 1, point, solution.z)
        value = recorder.trace.outer_value[-1]
        if value < best_value:
            best, best_value, best_z = point.clone(), value, z
    return BilevelResult(hyper=best, z=best_z, trace=recorder.trace, method="grid-search")


def random_search(
    problem: BilevelProblem,
    n_points: int,
    low: Tensor | float,
    high: Tensor | float,
    *,
    seed: int = 0,
    inner_tol: float = 1e-9,
) -> BilevelResult:
    """Score ``n_points`` hyperparameters drawn uniformly from the box [low, high] and return the best.

    This is random search as in Bergstra & Bengio (2012). The draws come from a generator seeded with ``seed``,
    and the trace has one row per draw, in the order drawn.
    """
    if n_points < 1:
        raise ValueError(f"n_points must be >= 1, got {n_points}.")
    reference = problem.initial_hyper()
    low = torch.as_tensor(low, dtype=reference.dtype).expand_as(reference)
    high = torch.as_tensor(high, dtype=reference.dtype).expand_as(reference)
    if not bool((low <= high).all()):
        raise ValueError(f"low must not exceed high, got low={low.tolist()[:5]} and high={high.tolist()[:5]} (first 5 entries).")
    # The box is convex, so its corners inside the domain put every draw inside it.
    for name, corner in (("low", low), ("high", high)):
        try:
            problem.check_hyper(corner.clone())
        except ValueError as error:
            raise ValueError(f"{name} lies outside the hyperparameter domain: {error}") from error
    generator = torch.Generator().manual_seed(seed)
    draws = torch.rand(n_points, reference.numel(), generator=generator, dtype=reference.dtype)
    result = grid_search(problem, low + (high - low) * draws, inner_tol=inner_tol)
    return BilevelResult(hyper=result.hyper, z=result.z, trace=result.trace, method="random-search")
