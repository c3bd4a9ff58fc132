"""Classical iterative solvers."""

from unrolled.solvers.ista import SolverResult, fista, ista, ista_step
from unrolled.solvers.trace import Trace

__all__ = ["SolverResult", "Trace", "fista", "ista", "ista_step"]
