r"""Proximal SVRG and loopless SVRG (L-SVRG): a full gradient at a snapshot corrects every mini-batch estimate.

.. math::
    \hat g_t = \tfrac1b\textstyle\sum_{j\in B_t}\tilde x_j\big(g_j(W_t) - g_j(\tilde W)\big)^\top/(n p_j) + \nabla_{\mathrm{data}}(\tilde W),
    \qquad W_{t+1} = \operatorname{prox}_{\gamma\,\mathrm{reg}\|\cdot\|_1}\big(W_t - \gamma(\hat g_t + \mathrm{reg\_l2}\,W_t)\big).

SVRG takes the snapshot :math:`\tilde W` at the start of every epoch (n/b inner steps; the last
inner iterate becomes the next snapshot). L-SVRG replaces the outer loop by a coin: after each
step, with probability p (b/n by default) the snapshot moves to the current iterate. The estimate
is unbiased and its variance vanishes as both :math:`W_t` and :math:`\tilde W` approach the optimum,
which allows a constant step and a linear rate on strongly convex problems.

References: Johnson, Zhang, "Accelerating stochastic gradient descent using predictive variance
reduction", NeurIPS 2013; Xiao, Zhang, "A proximal stochastic gradient method with progressive
variance reduction", SIAM J. Optim., 2014 (Prox-SVRG); Kovalev, Horváth, Richtárik, "Don't jump
through hoops and remove those loops: SVRG and Katyusha are better without the outer loop", ALT 2020.
"""

from __future__ import annotations

import numpy as np
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

# Default step 1/(3 L_b): inside the range of the analyses above, and stable on the shipped datasets.
DEFAULT_STEP_FACTOR = 1.0 / 3.0


def svrg_direction(
    problem: FiniteSum, W: Tensor, snapshot: Tensor, snapshot_gradient: Tensor, index: Tensor, weights: Tensor
) -> Tensor:
    """Return the SVRG estimate of the data gradient at W from the snapshot and its full data gradient."""
    rows = problem.rows(index)
    correction = problem.derivatives(W, rows, index) - problem.derivatives(snapshot, rows, index)
    return batch_gradient(rows, correction, weights) + snapshot_gradient


class _SVRG(StochasticMethod):
    name = "SVRG"
    evals_per_draw = 2

    def __init__(self, problem: FiniteSum, W: Tensor, step_size: float) -> None:
        super().__init__(problem, W, step_size)
        # The first snapshot is the starting point, so the trace's first variance entry measures the method's own estimate.
        self.take_snapshot()

    def take_snapshot(self) -> None:
        self.snapshot = self.W.clone()
        self.snapshot_gradient = self.full_data_gradient(self.snapshot)

    def start_epoch(self, epoch: int) -> None:
        if epoch > 0:
            self.take_snapshot()

    def estimate(self, index: Tensor, weights: Tensor) -> Tensor:
        return svrg_direction(self.problem, self.W, self.snapshot, self.snapshot_gradient, index, weights)

    def step(self, index: Tensor, weights: Tensor, iteration: int) -> None:
        self.W = proximal_step(self.problem, self.W, self.estimate(index, weights), self.step_size)


class _LooplessSVRG(_SVRG):
    name = "L-SVRG"

    def __init__(self, problem: FiniteSum, W: Tensor, step_size: float, probability: float, seed: int) -> None:
        super().__init__(problem, W, step_size)
        self.probability = probability
        self.coins = torch.Generator(device="cpu").manual_seed(seed)

    def start_epoch(self, epoch: int) -> None:
        """Take no snapshot: L-SVRG moves it by its coin after each step."""

    def step(self, index: Tensor, weights: Tensor, iteration: int) -> None:
        super().step(index, weights, iteration)
        if float(torch.rand((), generator=self.coins)) < self.probability:
            self.take_snapshot()


class _NumbaSVRG(NumbaDraws, _SVRG):
    """:class:`_SVRG` whose draws run in :func:`unrolled.solvers.numba_kernels.svrg_draws`. The snapshots stay in torch."""

    def run_draws(self, index: Tensor, weights: Tensor, first_iteration: int) -> None:
        self.kernels.svrg_draws(
            self.arrays, self.kernels.state_array(self.W), self.snapshot.numpy(), self.snapshot_gradient.contiguous().numpy(),
            index.numpy(), weights.numpy(), self.step_size,
        )


class _NumbaLooplessSVRG(NumbaDraws, _LooplessSVRG):
    """:class:`_LooplessSVRG` whose draws run in :func:`unrolled.solvers.numba_kernels.svrg_draws`.

    The coins of the epoch are drawn at once: ``torch.rand((m,))`` yields the values of m
    successive ``torch.rand(())`` calls on the CPU generator (torch 2.14), which the equality
    test with the torch backend checks. The kernel stops after each successful coin, and the
    snapshot is taken here in torch, as ``_LooplessSVRG.step`` does.
    """

    def run_draws(self, index: Tensor, weights: Tensor, first_iteration: int) -> None:
        coins = torch.rand((index.shape[0],), generator=self.coins).numpy().astype(np.float64)
        index, weights = index.numpy(), weights.numpy()
        position = 0
        while position < index.shape[0]:
            position += self.kernels.svrg_draws(
                self.arrays, self.kernels.state_array(self.W), self.snapshot.numpy(), self.snapshot_gradient.contiguous().numpy(),
                index[position:], weights[position:], self.step_size, coins[position:], self.probability,
            )
            if coins[position - 1] < self.probability:
                self.take_snapshot()


def svrg(
    problem: FiniteSum,
    *,
    step_size: float | None = None,
    loopless: bool = False,
    snapshot_probability: float | None = None,
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
    r"""Run proximal SVRG (or L-SVRG with ``loopless=True``) for ``max_epochs`` epochs of n/b steps.

    Args:
        step_size: :math:`\gamma`; :math:`1/(3L_b)` by default (see :mod:`unrolled.solvers.stochastic`).
        loopless: use L-SVRG's random snapshot updates instead of one snapshot per epoch.
        snapshot_probability: L-SVRG's p; b/n by default (one expected snapshot per epoch).
        The other arguments, ``backend`` included, are those of :func:`unrolled.solvers.sgd.sgd`. An epoch counts its n/b
        draws; the full gradients of the snapshots are counted in ``grad_evals``.
    """
    name = "L-SVRG" if loopless else "SVRG"
    numba = resolve_backend(backend, problem) == "numba"
    sampler, step, W = prepare_run(
        problem, W0, step_size=step_size, default_factor=DEFAULT_STEP_FACTOR, batch_size=batch_size, sampling=sampling, seed=seed, method=name
    )
    if loopless:
        probability = batch_size / problem.n_samples if snapshot_probability is None else snapshot_probability
        if not 0.0 < probability <= 1.0:
            raise ValueError(f"snapshot_probability must lie in (0, 1], got {probability}.")
        loopless_class = _NumbaLooplessSVRG if numba else _LooplessSVRG
        method: _SVRG = loopless_class(problem, W, step, probability, seed + 1)
    elif snapshot_probability is not None:
        raise ValueError("snapshot_probability applies to loopless SVRG only; pass loopless=True.")
    else:
        method = _NumbaSVRG(problem, W, step) if numba else _SVRG(problem, W, step)
    return run_epochs(method, sampler, max_epochs=max_epochs, tol=tol, f_star=f_star, trace=trace, variance_draws=variance_draws)
