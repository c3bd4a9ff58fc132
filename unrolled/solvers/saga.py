r"""Proximal SAGA: a table of the last derivative seen for every sample corrects each mini-batch estimate.

.. math::
    \hat g_t = \tfrac1b\textstyle\sum_{j\in B_t}\tilde x_j\big(g_j(W_t) - \alpha_j\big)^\top/(n p_j) + \bar\alpha,
    \qquad \bar\alpha = \tfrac1n\textstyle\sum_i \tilde x_i\alpha_i^\top,

then the proximal step, then :math:`\alpha_j \leftarrow g_j(W_t)` for the drawn samples. Because the
gradient of a linear model's sample is :math:`\tilde x_j g_j^\top`, the table stores one derivative
vector of length k per sample (n × k numbers), not n gradients. The table starts at :math:`W_0`
(one pass, counted in ``grad_evals``), and :math:`\bar\alpha` is recomputed from it at the start of
each epoch so that rounding does not accumulate.

Reference: Defazio, Bach, Lacoste-Julien, "SAGA: a fast incremental gradient method with support
for non-strongly convex composite objectives", NeurIPS 2014; Gazagnadou, Gower, Salmon, "Optimal
mini-batch and step sizes for SAGA", ICML 2019 (mini-batches).
"""

from __future__ import annotations

import torch
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

# Default step 1/(3 L_b), the step of Defazio et al.'s analysis.
DEFAULT_STEP_FACTOR = 1.0 / 3.0


def saga_direction(
    problem: FiniteSum, W: Tensor, table: Tensor, table_mean: Tensor, index: Tensor, weights: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Return the SAGA estimate at W, with the drawn rows and their new derivatives (for the table update)."""
    rows = problem.rows(index)
    derivatives = problem.derivatives(W, rows, index)
    # gather along the sample axis works with and without a leading instance axis (unrolled networks).
    stored = table.gather(-2, index[..., None].expand(*index.shape, table.shape[-1]))
    return batch_gradient(rows, derivatives - stored, weights) + table_mean, rows, derivatives


def first_occurrences(index: Tensor) -> Tensor:
    """Return the positions of the first occurrence of each distinct value of ``index`` (draws with replacement repeat)."""
    unique, inverse = torch.unique(index, return_inverse=True)
    positions = torch.arange(index.numel(), device=index.device)
    first = torch.full((unique.numel(),), index.numel(), dtype=positions.dtype, device=index.device)
    return first.scatter_reduce(0, inverse, positions, reduce="amin")


class _SAGA(StochasticMethod):
    name = "SAGA"

    def __init__(self, problem: FiniteSum, W: Tensor, step_size: float) -> None:
        super().__init__(problem, W, step_size)
        self.table = problem.all_derivatives(W)
        self.grad_evals += problem.n_samples
        self.table_mean = problem.features.T @ self.table / problem.n_samples

    def start_epoch(self, epoch: int) -> None:
        # The constructor has just computed the mean for epoch 0.
        if epoch > 0:
            self.table_mean = self.problem.features.T @ self.table / self.problem.n_samples

    def estimate(self, index: Tensor, weights: Tensor) -> Tensor:
        return saga_direction(self.problem, self.W, self.table, self.table_mean, index, weights)[0]

    def step(self, index: Tensor, weights: Tensor, iteration: int) -> None:
        direction, rows, derivatives = saga_direction(self.problem, self.W, self.table, self.table_mean, index, weights)
        self.W = proximal_step(self.problem, self.W, direction, self.step_size)
        # A sample drawn twice in one batch enters the table (and its mean) once.
        if index.numel() > 1:
            keep = first_occurrences(index)
            index, rows, derivatives = index[keep], rows[keep], derivatives[keep]
        self.table_mean += rows.T @ (derivatives - self.table[index]) / self.problem.n_samples
        self.table[index] = derivatives


class _NumbaSAGA(NumbaDraws, _SAGA):
    """:class:`_SAGA` whose draws run in :func:`unrolled.solvers.numba_kernels.saga_draws`, which updates W, the table and its mean in place."""

    def start_epoch(self, epoch: int) -> None:
        super().start_epoch(epoch)
        # The kernel writes the table and its mean through numpy views, which share memory only with contiguous tensors.
        self.table = self.table.contiguous()
        self.table_mean = self.table_mean.contiguous()

    def run_draws(self, index: Tensor, weights: Tensor, first_iteration: int) -> None:
        state = self.kernels.state_array
        self.kernels.saga_draws(self.arrays, state(self.W), state(self.table), state(self.table_mean),
                                index.numpy(), weights.numpy(), self.step_size)


def saga(
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
    r"""Run proximal SAGA for ``max_epochs`` epochs of n/b steps.

    ``step_size`` is :math:`1/(3L_b)` by default; the other arguments, ``backend`` included, are those of :func:`unrolled.solvers.sgd.sgd`.
    """
    sampler, step, W = prepare_run(
        problem, W0, step_size=step_size, default_factor=DEFAULT_STEP_FACTOR, batch_size=batch_size, sampling=sampling, seed=seed, method="SAGA"
    )
    method = _NumbaSAGA(problem, W, step) if resolve_backend(backend, problem) == "numba" else _SAGA(problem, W, step)
    return run_epochs(method, sampler, max_epochs=max_epochs, tol=tol, f_star=f_star, trace=trace, variance_draws=variance_draws)
