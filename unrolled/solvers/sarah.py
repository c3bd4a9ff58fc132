r"""Proximal SARAH: a recursive gradient estimate, restarted from a full gradient every epoch.

.. math::
    v_0 = \nabla_{\mathrm{data}}(W_0),\qquad
    v_t = \tfrac1b\textstyle\sum_{j\in B_t}\tilde x_j\big(g_j(W_t) - g_j(W_{t-1})\big)^\top/(n p_j) + v_{t-1},

with the proximal step :math:`W_{t+1} = \operatorname{prox}_{\gamma\,\mathrm{reg}\|\cdot\|_1}(W_t - \gamma(v_t + \mathrm{reg\_l2}\,W_t))`
after each estimate. Unlike SVRG's, the estimate is biased, but its variance shrinks with the
steps themselves, as :math:`\|W_t - W_{t-1}\|`.

References: Nguyen, Liu, Scheinberg, Takáč, "SARAH: a novel method for machine learning problems
using stochastic recursive gradient", ICML 2017; Pham, Nguyen, Phan, Tran-Dinh, "ProxSARAH: an
efficient algorithmic framework for stochastic composite nonconvex optimization", JMLR 2020.
"""

from __future__ import annotations

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

# Default step 1/(2 L_b), the step of Nguyen et al.'s experiments.
DEFAULT_STEP_FACTOR = 0.5


def sarah_direction(problem: FiniteSum, W: Tensor, W_previous: Tensor, previous: Tensor, index: Tensor, weights: Tensor) -> Tensor:
    """Return the SARAH estimate at W from the previous iterate and the previous estimate."""
    rows = problem.rows(index)
    difference = problem.derivatives(W, rows, index) - problem.derivatives(W_previous, rows, index)
    return batch_gradient(rows, difference, weights) + previous


class _SARAH(StochasticMethod):
    name = "SARAH"
    evals_per_draw = 2

    def __init__(self, problem: FiniteSum, W: Tensor, step_size: float) -> None:
        super().__init__(problem, W, step_size)
        # v_0, the full gradient at the start: epoch 0 takes its step with it, and at this state the
        # estimate is exact, so the trace's first variance entry measures the method's own estimate.
        self.W_previous = W
        self.previous = self.full_data_gradient(W)

    def start_epoch(self, epoch: int) -> None:
        if epoch > 0:
            self.previous = self.full_data_gradient(self.W)
        self.W_previous = self.W
        self.W = proximal_step(self.problem, self.W, self.previous, self.step_size)

    def estimate(self, index: Tensor, weights: Tensor) -> Tensor:
        return sarah_direction(self.problem, self.W, self.W_previous, self.previous, index, weights)

    def step(self, index: Tensor, weights: Tensor, iteration: int) -> None:
        self.previous = self.estimate(index, weights)
        self.W_previous = self.W
        self.W = proximal_step(self.problem, self.W, self.previous, self.step_size)


class _NumbaSARAH(NumbaDraws, _SARAH):
    """:class:`_SARAH` whose draws run in :func:`unrolled.solvers.numba_kernels.sarah_draws`. The full-gradient step of each epoch stays in torch."""

    def start_epoch(self, epoch: int) -> None:
        super().start_epoch(epoch)
        # The kernel writes these three through numpy views, which share memory only with contiguous tensors.
        self.W_previous = self.W_previous.contiguous()
        self.previous = self.previous.contiguous()
        self.W = self.W.contiguous()

    def run_draws(self, index: Tensor, weights: Tensor, first_iteration: int) -> None:
        state = self.kernels.state_array
        self.kernels.sarah_draws(self.arrays, state(self.W), state(self.W_previous), state(self.previous),
                                 index.numpy(), weights.numpy(), self.step_size)


def sarah(
    problem: FiniteSum,
    *,
    step_size: float | None = None,
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
    r"""Run proximal SARAH for ``max_epochs`` epochs: one full-gradient step, then n/b recursive steps.

    ``step_size`` is :math:`1/(2L_b)` by default; the other arguments, ``backend`` included, are those of :func:`unrolled.solvers.sgd.sgd`.
    """
    sampler, step, W = prepare_run(
        problem, W0, step_size=step_size, default_factor=DEFAULT_STEP_FACTOR, batch_size=batch_size, sampling=sampling, seed=seed, method="SARAH"
    )
    method = _NumbaSARAH(problem, W, step) if resolve_backend(backend, problem) == "numba" else _SARAH(problem, W, step)
    return run_epochs(method, sampler, max_epochs=max_epochs, tol=tol, f_star=f_star, trace=trace, variance_draws=variance_draws)
