"""Traces of bilevel solvers: the hyperparameters scored at the exact inner solution, against time and oracle calls.

Every solver records the same columns, so curves of different solvers share axes. A point is scored by
solving the inner problem at the current h to a tight tolerance (warm-started from the previous
point), so the outer value and test error are those of h itself, not of the solver's running inner
iterate. Scoring time is excluded from the solver's clock.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import Tensor

from unrolled.bilevel.hypergradient import implicit_hypergradient
from unrolled.bilevel.problems import BilevelProblem, LinearModelBilevel

# Inner residual at which a traced point is scored.
SCORE_TOL = 1e-7


@dataclass
class BilevelTrace:
    """Columns of a bilevel run, one entry per scored point.

    Attributes:
        iteration: outer iterations done.
        oracle_calls: per-sample derivative evaluations so far (a gradient, a Hessian-vector product
            or a cross derivative of one sample counts 1; a full-batch one counts n).
        time: solver seconds so far, scoring excluded.
        outer_value: F(z*(h), h) at the current h (the validation loss).
        test_error: test error rate of z*(h) (classification), or NaN.
        test_loss: mean test loss of z*(h), or NaN when the problem has no test split.
        hypergradient_norm: ‖dF/dh‖ by implicit differentiation, or NaN when not asked for.
    """

    iteration: list[int] = field(default_factory=list)
    oracle_calls: list[int] = field(default_factory=list)
    time: list[float] = field(default_factory=list)
    outer_value: list[float] = field(default_factory=list)
    test_error: list[float] = field(default_factory=list)
    test_loss: list[float] = field(default_factory=list)
    hypergradient_norm: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, list]:
        """Return the columns as plain lists (JSON-ready)."""
        return {name: list(values) for name, values in self.__dict__.items()}


@dataclass(frozen=True)
class BilevelResult:
    """The final hyperparameters, their inner solution and the trace of a bilevel run."""

    hyper: Tensor
    z: Tensor
    trace: BilevelTrace
    method: str


class Recorder:
    """Keeps the solver clock and scores points into a :class:`BilevelTrace`.

    Args:
        problem: the bilevel problem.
        hypergradient_norm: also record ‖dF/dh‖ at each point (one implicit hypergradient each).
    """

    def __init__(self, problem: BilevelProblem, *, hypergradient_norm: bool = False) -> None:
        self.problem = problem
        self.with_gradient = hypergradient_norm
        self.trace = BilevelTrace()
        self.elapsed = 0.0
        self.oracle_calls = 0
        self._started: float | None = None
        self._z: Tensor | None = None

    def start(self) -> None:
        """Start (or restart) the solver clock."""
        self._started = time.perf_counter()

    def stop(self) -> None:
        """Stop the solver clock, adding the time since :meth:`start`."""
        if self._started is not None:
            self.elapsed += time.perf_counter() - self._started
            self._started = None

    @torch.no_grad()
    def score(self, iteration: int, hyper: Tensor, z0: Tensor | None = None) -> Tensor:
        """Score h at its exact inner solution (solved from ``z0``, else from the last scored point), append a row, and return that solution."""
        running = self._started is not None
        self.stop()
        problem = self.problem
        solution = problem.solve_inner(hyper, self._z if z0 is None else z0, tol=SCORE_TOL)
        self._z = solution.z
        trace = self.trace
        trace.iteration.append(iteration)
        trace.oracle_calls.append(self.oracle_calls)
        trace.time.append(self.elapsed)
        trace.outer_value.append(float(problem.outer(solution.z, hyper)))
        test_error = test_loss = float("nan")
        if isinstance(problem, LinearModelBilevel) and "test" in problem.splits:
            test_loss = problem.mean_loss(solution.z, "test")
            if problem.loss.name != "squared":
                test_error = problem.error_rate(solution.z, "test")
        trace.test_error.append(test_error)
        trace.test_loss.append(test_loss)
        norm = float("nan")
        if self.with_gradient:
            gradient = implicit_hypergradient(problem, hyper, solution.z, inner_tol=10 * SCORE_TOL).gradient
            norm = float(torch.linalg.vector_norm(gradient))
        trace.hypergradient_norm.append(norm)
        if running:
            self.start()
        return solution.z
