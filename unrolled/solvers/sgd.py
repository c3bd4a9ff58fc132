r"""Proximal stochastic gradient descent (SGD) on a regularised finite sum, with constant or decreasing steps.

.. math:: W_{t+1} = \operatorname{prox}_{\gamma_t\,\mathrm{reg}\|\cdot\|_1}\Big(W_t - \gamma_t\big(\tfrac1b\textstyle\sum_{j\in B_t}\tilde x_j g_j^\top/(n p_j) + \mathrm{reg\_l2}\,W_t\big)\Big)

With a constant step the iterates settle in a neighbourhood of the optimum whose size grows with
:math:`\gamma` and with the variance of the estimate at the optimum, which does not vanish; a
decreasing step trades that floor for a sublinear rate.

Reference: Robbins, Monro, "A stochastic approximation method", Ann. Math. Statist., 1951;
Bottou, Curtis, Nocedal, "Optimization methods for large-scale machine learning", SIAM Review, 2018.
"""

from __future__ import annotations

import math

import numpy as np
from torch import Tensor

from unrolled.problems.finite_sum import FiniteSum
from unrolled.solvers.stochastic import (
    NumbaDraws,
    StochasticMethod,
    StochasticResult,
    batch_gradient,
    prepare_run,
    proximal_step,
    resolve_backend,
    run_epochs,
)

SCHEDULES = ("constant", "inverse", "inverse_sqrt")


def sgd_direction(problem: FiniteSum, W: Tensor, index: Tensor, weights: Tensor) -> Tensor:
    """Return the plain mini-batch estimate of the data gradient at W."""
    rows = problem.rows(index)
    return batch_gradient(rows, problem.derivatives(W, rows, index), weights)


class _SGD(StochasticMethod):
    name = "SGD"

    def __init__(self, problem: FiniteSum, W: Tensor, step_size: float, schedule: str, batch_size: int) -> None:
        super().__init__(problem, W, step_size)
        self.schedule = schedule
        # The draws of one epoch of run_epochs, so that the schedule decays once per epoch run.
        self.draws_per_epoch = float(max(1, problem.n_samples // batch_size))

    def step_at(self, iteration: int) -> float:
        """Return the step of iteration t: constant, or decayed by 1/(1 + e) or 1/sqrt(1 + e) after e epochs."""
        epochs = iteration / self.draws_per_epoch
        if self.schedule == "inverse":
            return self.step_size / (1.0 + epochs)
        if self.schedule == "inverse_sqrt":
            return self.step_size / math.sqrt(1.0 + epochs)
        return self.step_size

    def estimate(self, index: Tensor, weights: Tensor) -> Tensor:
        return sgd_direction(self.problem, self.W, index, weights)

    def step(self, index: Tensor, weights: Tensor, iteration: int) -> None:
        self.W = proximal_step(self.problem, self.W, self.estimate(index, weights), self.step_at(iteration))


class _NumbaSGD(NumbaDraws, _SGD):
    """:class:`_SGD` whose draws run in :func:`unrolled.solvers.numba_kernels.sgd_draws`."""

    def steps_at(self, first_iteration: int, n_iter: int) -> np.ndarray:
        """Return :meth:`_SGD.step_at` of iterations first_iteration .. first_iteration + n_iter - 1, with the same float operations."""
        epochs = np.arange(first_iteration, first_iteration + n_iter) / self.draws_per_epoch
        if self.schedule == "inverse":
            return self.step_size / (1.0 + epochs)
        if self.schedule == "inverse_sqrt":
            return self.step_size / np.sqrt(1.0 + epochs)
        return np.full(n_iter, self.step_size)

    def run_draws(self, index: Tensor, weights: Tensor, first_iteration: int) -> None:
        steps = self.steps_at(first_iteration, index.shape[0])
        self.kernels.sgd_draws(self.arrays, self.kernels.state_array(self.W), index.numpy(), weights.numpy(), steps)


def sgd(
    problem: FiniteSum,
    *,
    step_size: float | None = None,
    schedule: str = "constant",
    batch_size: int = 1,
    sampling: str = "uniform",
    max_epochs: int = 100,
    tol: float = 0.0,
    W0: Tensor | None = None,
    f_star: float | None = None,
    trace: bool = False,
    variance_draws: int = 0,
    seed: int = 0,
    backend: str = "auto",
) -> StochasticResult:
    r"""Run proximal SGD for ``max_epochs`` epochs of n/b steps.

    Args:
        problem: the finite sum.
        step_size: :math:`\gamma_0`; :math:`1/L_b` by default (see :mod:`unrolled.solvers.stochastic`).
        schedule: ``constant``, ``inverse`` (:math:`\gamma_0/(1 + e)` after e epochs) or ``inverse_sqrt``.
        batch_size: b, draws per step.
        sampling: ``uniform`` or ``importance`` (:math:`p_i \propto L_i`).
        max_epochs: epochs to run at most.
        tol: stop once F - f_star <= tol (needs ``f_star``).
        W0: starting point of shape (dim, k); zeros by default.
        f_star: optimal value, for the suboptimality column of the trace and for ``tol``.
        trace: record a per-epoch :class:`~unrolled.solvers.stochastic.StochasticTrace`.
        variance_draws: mini-batches per epoch used to measure the estimator's variance (0: off).
        seed: seed of the index stream.
        backend: ``torch``, ``numba`` (compiled CPU kernels, :mod:`unrolled.solvers.numba_kernels`) or
            ``auto`` (numba on CPU when it imports, torch otherwise); see
            :func:`unrolled.solvers.stochastic.resolve_backend`.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}.")
    sampler, step, W = prepare_run(
        problem, W0, step_size=step_size, default_factor=1.0, batch_size=batch_size, sampling=sampling, seed=seed, method="SGD"
    )
    method_class = _NumbaSGD if resolve_backend(backend, problem) == "numba" else _SGD
    method = method_class(problem, W, step, schedule, batch_size)
    return run_epochs(method, sampler, max_epochs=max_epochs, tol=tol, f_star=f_star, trace=trace, variance_draws=variance_draws)
