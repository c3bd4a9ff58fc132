"""Traces of bilevel solvers: hyperparameters scored at their exact inner solution, against time and oracle calls.

Every solver records the same columns, so curves of different solvers share axes. To score a point,
the recorder solves the inner problem at the current h to a tight tolerance, warm-started from the
previous point. The outer value and test error are therefore those of h itself, not of the solver's
running inner iterate. Scoring time is excluded from the solver's clock.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import Tensor

from unrolled.bilevel.hypergradient import implicit_hypergradient
from unrolled.bilevel.problems import BilevelProblem, LinearModelBilevel

# Inner-residual tolerance of the solve that scores a traced point.
SCORE_TOL = 1e-7


@dataclass
class BilevelTrace:
    """Columns of a bilevel run, one entry per scored point.

    Attributes:
        iteration: number of outer iterations completed.
        oracle_calls: per-sample derivative evaluations so far. A gradient, a Hessian-vector product
            or a cross derivative of one sample counts 1, and a full-batch one counts n.
        time: solver time in seconds so far, excluding scoring.
        outer_value: F(z*(h), h) at the current h, which is the validation loss.
        test_error: test error rate of z*(h) for classification losses, or NaN for the squared loss
            and when the problem has no test split.
        test_loss: mean test loss of z*(h), or NaN when the problem has no test split.
        hypergradient_norm: ‖dF/dh‖ by implicit differentiation, or NaN when not requested.
    """

    iteration: list[int] = field(default_factory=list)
    oracle_calls: list[int] = field(default_factory=list)
    time: list[float] = field(default_factory=list)
    outer_value: list[float] = field(default_factory=list)
    test_error: list[float] = field(default_factory=list)
    test_loss: list[float] = field(default_factory=list)
    hypergradient_norm: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, list]:
        """Return the columns as plain lists, ready for JSON."""
        return {name: list(values) for name, values in self.__dict__.items()}


@dataclass(frozen=True)
class BilevelResult:
    """The final hyperparameters, their inner solution and the trace of a bilevel run."""

    hyper: Tensor
    z: Tensor
    trace: BilevelTrace
    method: str


class Recorder:
    """Solver clock and scorer that appends points to a :class:`BilevelTrace`.

    Solvers add their own evaluations to ``oracle_calls``, which each scored row copies.

    Args:
        problem: the bilevel problem.
        hypergradient_norm: also record ‖dF/dh‖ at each point, at the cost of one implicit
            hypergradient per point.
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
        """Start or restart the solver clock."""
        self._started = time.perf_counter()

    def stop(self) -> None:
        """Stop the solver clock, adding the time since :meth:`start`."""
        if self._started is not None:
            self.elapsed += time.perf_counter() - self._started
            self._started = None

    @torch.no_grad()
    def score(self, iteration: int, hyper: Tensor, z0: Tensor | None = None) -> Tensor:
        """Score h at its exact inner solution, append a row to the trace and return that solution.

        The inner solve starts from ``z0`` when given, else from the last scored point. The solver
        clock is paused while scoring.
        """
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
