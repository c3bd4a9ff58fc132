"""Classical iterative solvers."""

from unrolled.solvers.admm import ADMMResult, ADMMTrace, admm_lasso
from unrolled.solvers.admm_imaging import admm_tv, admm_wavelet
from unrolled.solvers.cg import conjugate_gradient
from unrolled.solvers.ista import SolverResult, fista, ista, ista_step
from unrolled.solvers.proximal_gradient import ProximalGradientResult, proximal_gradient
from unrolled.solvers.saga import saga
from unrolled.solvers.sarah import sarah
from unrolled.solvers.sgd import sgd
from unrolled.solvers.stochastic import StochasticResult, StochasticTrace
from unrolled.solvers.svrg import svrg
from unrolled.solvers.trace import Trace

__all__ = [
    "ADMMResult",
    "ADMMTrace",
    "ProximalGradientResult",
    "SolverResult",
    "StochasticResult",
    "StochasticTrace",
    "Trace",
    "admm_lasso",
    "admm_tv",
    "admm_wavelet",
    "conjugate_gradient",
    "fista",
    "ista",
    "ista_step",
    "proximal_gradient",
    "saga",
    "sarah",
    "sgd",
    "svrg",
]
