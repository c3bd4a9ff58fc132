"""Classical iterative solvers."""

from unrolled.solvers.ista import SolverResult, fista, ista, ista_step
from unrolled.solvers.saga import saga
from unrolled.solvers.sarah import sarah
from unrolled.solvers.sgd import sgd
from unrolled.solvers.stochastic import StochasticResult, StochasticTrace
from unrolled.solvers.svrg import svrg
from unrolled.solvers.trace import Trace

__all__ = ["SolverResult", "StochasticResult", "StochasticTrace", "Trace", "fista", "ista", "ista_step", "saga", "sarah", "sgd", "svrg"]
