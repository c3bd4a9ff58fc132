"""Helpers shared by the bilevel studies: finite differences, timing, quantiles over seeds and solver colours."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch

from unrolled.bilevel.problems import BilevelProblem

# One colour per solver, shared by the figures.
COLORS = {"SABA": "tab:orange", "SOBA": "tab:blue", "SOBA (fixed steps)": "tab:cyan", "stocBiO": "tab:green", "implicit GD": "tab:gray"}


def relative_error(estimate: torch.Tensor, reference: torch.Tensor) -> float:
    """Return ‖estimate − reference‖ / ‖reference‖."""
    return float(torch.linalg.vector_norm(estimate - reference) / torch.linalg.vector_norm(reference))


def finite_differences(problem: BilevelProblem, hyper: torch.Tensor, coordinates: Sequence[int], *, eps: float = 1e-6, tol: float = 1e-12) -> torch.Tensor:
    """Return central differences of :math:`h \\mapsto F(z^*(h), h)` along ``coordinates``, with tight warm-started inner solves."""
    base = problem.solve_inner(hyper, tol=tol).z
    values = []
    for j in coordinates:
        step = torch.zeros_like(hyper)
        step[j] = eps
        plus = problem.solve_inner(hyper + step, base, tol=tol).z
        minus = problem.solve_inner(hyper - step, base, tol=tol).z
        values.append(float(problem.outer(plus, hyper + step) - problem.outer(minus, hyper - step)) / (2 * eps))
    return torch.tensor(values, dtype=torch.float64)


def timed(function: Callable[[], object]) -> tuple[object, float]:
    """Call ``function`` and return its result with the wall-clock seconds it took."""
    start = time.perf_counter()
    result = function()
    return result, time.perf_counter() - start


def quantiles(values: list[list[float]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return the median, 20 % and 80 % quantiles over the first axis of ``values`` (runs × points)."""
    table = torch.tensor(values, dtype=torch.float64)
    # quantile(0.5) rather than median(): the latter takes the lower middle value of an even count.
    return table.quantile(0.5, dim=0), table.quantile(0.2, dim=0), table.quantile(0.8, dim=0)


def percent_cell(values: list[float]) -> str:
    """Format fractions over seeds as a table cell: median [20 %, 80 %] in percent."""
    median, low, high = (float(x) for x in quantiles([[value] for value in values]))
    return f"{100 * median:.1f} [{100 * low:.1f}, {100 * high:.1f}]"
