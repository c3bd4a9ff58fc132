r"""Classical baselines of a report: the choice of ``reg``, traced ISTA/FISTA runs and iteration counts.

Both solvers minimise :math:`\tfrac12\|Ax - y\|_2^2 + \mathrm{reg}\,\|x\|_1` with step 1/L in the
problem's dtype (float64 for the problems of :mod:`unrolled.problems`), starting from x = 0.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch
from torch import Tensor

from unrolled.metrics import nmse_db, nmse_db_per_sample
from unrolled.problems import Problem
from unrolled.report.evaluate import signal_psnr_db
from unrolled.report.results import ClassicalRun, IterationMetrics, RegChoice
from unrolled.solvers import SolverResult, fista, ista

log = logging.getLogger(__name__)

SOLVER_FUNCTIONS = {"ista": ista, "fista": fista}

# A network that computes exactly the ISTA iterates can still differ from the solver in the last bit
# (another memory layout of W selects another GEMM kernel), which moves its NMSE by about 1e-15 dB.
# Counting a trace entry within this margin as reached keeps such ties from costing an iteration.
REACH_TOLERANCE_DB = 1e-9


def solve(solver: str, A: Tensor, y: Tensor, reg: Tensor | float, max_iter: int, **kwargs) -> SolverResult:
    """Run ``solver`` (``"ista"`` or ``"fista"``) with the default step 1/L."""
    if solver not in SOLVER_FUNCTIONS:
        raise ValueError(f"unknown solver {solver!r}; expected one of {sorted(SOLVER_FUNCTIONS)}.")
    return SOLVER_FUNCTIONS[solver](A, y, reg, max_iter=max_iter, **kwargs)


def choose_reg(
    solver: str,
    A: Tensor,
    y_val: Tensor,
    x_val: Tensor,
    grid: Sequence[float],
    max_iter: int,
    progress: bool = False,
) -> RegChoice:
    """Return the grid value of ``reg`` with the lowest aggregate validation NMSE after ``max_iter`` iterations.

    The whole grid is solved in one batched call: the validation set is repeated once per grid value
    and ``reg`` is passed per sample, with shape (len(grid) · batch, 1). Ties go to the first value
    in grid order; NaN scores never win unless all are NaN.
    """
    if len(grid) == 0:
        raise ValueError("the reg grid is empty; pass at least one value or a fixed reg.")
    n_values, batch = len(grid), y_val.shape[0]
    grid_tensor = torch.tensor([float(value) for value in grid], dtype=A.dtype, device=A.device)
    reg = grid_tensor.repeat_interleave(batch).unsqueeze(-1)

    result = solve(solver, A, y_val.repeat(n_values, 1), reg, max_iter, progress=progress)
    estimates = result.x.reshape(n_values, batch, -1)
    scores = [float(nmse_db(estimates[index], x_val)) for index in range(n_values)]

    best = min(range(n_values), key=lambda index: (math.isnan(scores[index]), scores[index]))
    choice = RegChoice(solver, float(grid[best]), False, [float(value) for value in grid], scores, batch)
    log.info(
        "%s: reg = %.4g chosen from %d values (validation NMSE %.2f dB after %d iterations on %d samples)",
        solver.upper(),
        choice.reg,
        n_values,
        scores[best],
        max_iter,
        batch,
    )
    if n_values > 1 and best in (0, n_values - 1):
        log.warning(
            "%s: the chosen reg %.4g is at the edge of the grid; widen the grid to check that it is the validation optimum.",
            solver.upper(),
            choice.reg,
        )
    return choice


def run_traced(solver: str, A: Tensor, y: Tensor, x: Tensor, reg: float, max_iter: int, progress: bool = False) -> ClassicalRun:
    """Run ``solver`` for ``max_iter`` iterations on the test set with a trace of NMSE and time per iteration."""
    result = solve(solver, A, y, reg, max_iter, x_true=x, trace=True, progress=progress)
    trace = result.trace
    log.info(
        "%s: test NMSE %.2f dB (aggregate), %.2f dB (per-sample mean) after %d iterations in %.2f s",
        solver.upper(),
        trace.nmse_db[-1],
        trace.nmse_db_per_sample[-1],
        max_iter,
        trace.time_s[-1],
    )
    return ClassicalRun(solver, reg, max_iter, trace)


def measure_at_iterations(
    solver: str,
    problem: Problem,
    A: Tensor,
    y: Tensor,
    x: Tensor,
    reg: float,
    iteration_counts: Sequence[int],
    signal_range: float | None,
) -> list[IterationMetrics]:
    """Measure ``solver`` after each of ``iteration_counts`` iterations, with PSNR of ``problem.signal`` when a range is given.

    Each count is a separate run from x = 0, so the result equals iterate k of a longer run.
    """
    measurements = []
    for n_iter in sorted(set(iteration_counts)):
        estimate = solve(solver, A, y, reg, n_iter).x
        psnr = signal_psnr_db(problem, estimate, x, signal_range) if signal_range is not None else None
        measurements.append(
            IterationMetrics(solver, n_iter, float(nmse_db(estimate, x)), float(nmse_db_per_sample(estimate, x)), psnr)
        )
    return measurements


def iterations_to_reach(nmse_trace: Sequence[float], target_db: float, tolerance_db: float = REACH_TOLERANCE_DB) -> int | None:
    """Return the first k with ``nmse_trace[k] <= target_db + tolerance_db``, or None when no entry reaches it.

    A NaN target is never reached.
    """
    if math.isnan(target_db):
        return None
    for n_iter, value in enumerate(nmse_trace):
        if value <= target_db + tolerance_db:
            return n_iter
    return None
