r"""Unrolled SVRG and SAGA: K variance-reduced steps with learned per-layer step sizes (and momentum).

Layer k applies the update of the classical method, with the same functions
(:func:`~unrolled.solvers.svrg.svrg_direction`, :func:`~unrolled.solvers.saga.saga_direction`,
:func:`~unrolled.solvers.stochastic.proximal_step`), to a batch of problem instances:

.. math::
    V_k = W_k + \beta_k (W_k - W_{k-1}),\qquad
    W_{k+1} = \operatorname{prox}_{\gamma_k\mathrm{reg}\|\cdot\|_1}\big(V_k - \gamma_k(\hat g_k(V_k) + \mathrm{reg\_l2}\,V_k)\big),
    \qquad \gamma_k = s_k / L_b ,

where :math:`\hat g_k` is the method's estimate from b uniform draws and :math:`L_b` the instance's
mini-batch smoothness (:meth:`~unrolled.problems.finite_sum_batch.FiniteSumBatch.batch_smoothness`).
The learned parameters are the scales :math:`s_k \in (0, 2)`, stored as logits of :math:`s_k/2` so
that every step stays in the range that the classical solvers accept, and, with
``momentum=True``, the momenta :math:`\beta_k \in (0, 1)`, stored as logits. Measuring steps in units of
:math:`1/L_b` lets one network serve instances of different smoothness. With every :math:`s_k` equal
to the classical constant and no momentum, the network is the classical method run for K steps
(tested against :func:`~unrolled.solvers.svrg.svrg` and :func:`~unrolled.solvers.saga.saga`).

Unrolling a fixed number of iterations and learning their parameters is the idea of LISTA
(Gregor, LeCun, "Learning fast approximations of sparse coding", ICML 2010), here applied to the
step sizes and momenta of variance-reduced methods.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from unrolled.problems.finite_sum_batch import FiniteSumBatch
from unrolled.solvers.saga import saga_direction
from unrolled.solvers.stochastic import proximal_step
from unrolled.solvers.svrg import svrg_direction


class UnrolledVarianceReduced(nn.Module):
    """Common part of the unrolled variance-reduced networks: parameters, draws, momentum and the step.

    Args:
        n_layers: K, the number of steps.
        batch_size: b, uniform draws per step.
        step_scale: initial :math:`s_k` (the classical default of the method when None).
        momentum: learn an extrapolation :math:`\\beta_k` per layer (initialised near 0).
    """

    default_step_scale: float
    # Per-sample gradients one draw costs (2 for SVRG: the iterate and the snapshot).
    evals_per_draw: int = 1

    def __init__(self, n_layers: int, batch_size: int = 1, step_scale: float | None = None, momentum: bool = False) -> None:
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {n_layers}.")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        scale = self.default_step_scale if step_scale is None else step_scale
        if not 0.0 < scale < 2.0:
            raise ValueError(f"step_scale must lie in (0, 2) (steps of at most 2/L_b), got {scale}.")
        self.n_layers = n_layers
        self.batch_size = batch_size
        self.step_logit = nn.Parameter(torch.full((n_layers,), math.log(scale / (2.0 - scale))))
        # logit -6 gives beta ~ 0.0025: the network starts as the plain method.
        self.momentum_logit = nn.Parameter(torch.full((n_layers,), -6.0)) if momentum else None

    def step_scales(self) -> Tensor:
        """Return the learned :math:`s_k \\in (0, 2)`, shape (K,)."""
        return 2.0 * torch.sigmoid(self.step_logit)

    def momenta(self) -> Tensor | None:
        """Return the learned :math:`\\beta_k`, shape (K,), or None without momentum."""
        return None if self.momentum_logit is None else torch.sigmoid(self.momentum_logit)

    def draw(self, problem: FiniteSumBatch, generator: torch.Generator | None = None) -> Tensor:
        """Return uniform draws of shape (K, B, b) for ``problem``, from a CPU generator."""
        if self.batch_size > problem.n_samples:
            raise ValueError(f"batch_size {self.batch_size} exceeds the instances' {problem.n_samples} samples.")
        index = torch.randint(problem.n_samples, (self.n_layers, problem.n_instances, self.batch_size), generator=generator)
        return index.to(problem.device)

    def grad_evals(self, problem: FiniteSumBatch) -> list[int]:
        """Return the per-sample gradients computed before each layer's output (entry k: after k layers)."""
        return [problem.n_samples + k * self.batch_size * self.evals_per_draw for k in range(self.n_layers + 1)]

    def forward(self, problem: FiniteSumBatch, index: Tensor | None = None, W0: Tensor | None = None) -> list[Tensor]:
        """Return the iterates :math:`W_0, \\dots, W_K`, each of shape (B, dim, k).

        Args:
            problem: the batch of instances.
            index: draws of shape (K, B, b); drawn from the global generator when None.
            W0: starting point (B, dim, k); zeros by default.
        """
        index = self.draw(problem) if index is None else index
        if index.shape != (self.n_layers, problem.n_instances, self.batch_size):
            raise ValueError(
                f"index must have shape ({self.n_layers}, {problem.n_instances}, {self.batch_size}), got {tuple(index.shape)}."
            )
        W = problem.zeros() if W0 is None else W0
        self.start(problem, W)
        inverse_smoothness = (1.0 / problem.batch_smoothness(self.batch_size))[:, None, None]
        weights = torch.ones(index.shape[1:], dtype=problem.dtype, device=problem.device)
        scales = self.step_scales().to(problem.dtype)
        momenta = self.momenta()
        iterates, previous = [W], W
        for k in range(self.n_layers):
            self.before_layer(problem, k, W)
            V = W if momenta is None else W + momenta[k].to(problem.dtype) * (W - previous)
            direction = self.direction(problem, V, index[k], weights)
            previous, W = W, proximal_step(problem, V, direction, scales[k] * inverse_smoothness)
            iterates.append(W)
        return iterates

    def start(self, problem: FiniteSumBatch, W0: Tensor) -> None:
        """Initialise the method's memory at the starting point."""
        raise NotImplementedError

    def before_layer(self, problem: FiniteSumBatch, k: int, W: Tensor) -> None:
        """Refresh the method's memory before layer k (SVRG's periodic snapshots); nothing by default."""

    def direction(self, problem: FiniteSumBatch, V: Tensor, index: Tensor, weights: Tensor) -> Tensor:
        """Return the method's estimate of the data gradient at V, updating its memory."""
        raise NotImplementedError


class UnrolledSVRG(UnrolledVarianceReduced):
    """SVRG unrolled: the snapshot starts at the starting point and moves to the current iterate every ``snapshot_every`` layers.

    Args:
        snapshot_every: layers between snapshots (each costs n per-sample gradients); None keeps
            the first snapshot throughout, the classical SVRG epoch when K <= n/b.
        Other arguments: those of :class:`UnrolledVarianceReduced`.
    """

    default_step_scale = 1.0 / 3.0
    evals_per_draw = 2

    def __init__(
        self,
        n_layers: int,
        batch_size: int = 1,
        step_scale: float | None = None,
        momentum: bool = False,
        snapshot_every: int | None = None,
    ) -> None:
        super().__init__(n_layers, batch_size, step_scale, momentum)
        if snapshot_every is not None and snapshot_every < 1:
            raise ValueError(f"snapshot_every must be >= 1 or None, got {snapshot_every}.")
        self.snapshot_every = snapshot_every

    def start(self, problem: FiniteSumBatch, W0: Tensor) -> None:
        self.snapshot = W0
        self.snapshot_gradient = problem.data_gradient(W0)

    def before_layer(self, problem: FiniteSumBatch, k: int, W: Tensor) -> None:
        if self.snapshot_every is not None and k > 0 and k % self.snapshot_every == 0:
            self.start(problem, W)

    def grad_evals(self, problem: FiniteSumBatch) -> list[int]:
        evals = super().grad_evals(problem)
        if self.snapshot_every is None:
            return evals
        return [count + problem.n_samples * ((k - 1) // self.snapshot_every if k > 0 else 0) for k, count in enumerate(evals)]

    def direction(self, problem: FiniteSumBatch, V: Tensor, index: Tensor, weights: Tensor) -> Tensor:
        return svrg_direction(problem, V, self.snapshot, self.snapshot_gradient, index, weights)


class UnrolledSAGA(UnrolledVarianceReduced):
    """SAGA unrolled: the table starts at the derivatives of the starting point (n evaluations)."""

    default_step_scale = 1.0 / 3.0

    def start(self, problem: FiniteSumBatch, W0: Tensor) -> None:
        self.table = problem.all_derivatives(W0)
        self.table_mean = problem.features.transpose(1, 2) @ self.table / problem.n_samples

    def direction(self, problem: FiniteSumBatch, V: Tensor, index: Tensor, weights: Tensor) -> Tensor:
        direction, _, derivatives = saga_direction(problem, V, self.table, self.table_mean, index, weights)
        # Out of place, so that gradients flow through the table; a sample drawn twice gets the same value twice.
        self.table = self.table.scatter(1, index[..., None].expand_as(derivatives), derivatives)
        self.table_mean = problem.features.transpose(1, 2) @ self.table / problem.n_samples
        return direction
