r"""An unrolled network's parameters as hyperparameters of a bilevel problem, beside the Lasso weight chosen the classical way.

**Network parameters.** ALISTA's per-layer steps :math:`\gamma_k` and thresholds :math:`\theta_k` are
the hyperparameters h of an inner solver, the K layers themselves. The outer loss is the recovery
error :math:`\sum\|x_K(h; y) - x\|^2 / \sum\|x\|^2` over samples (y, x) of the problem. The
hypergradient by reverse mode through all K layers is exactly end-to-end training
(:func:`network_hypergradient` with ``truncate=None``). Truncated back-propagation (last T layers)
and checkpointing (store every c-th state, recompute the rest) are the memory-saving variants of
:mod:`unrolled.bilevel.hypergradient`, and :func:`fit_network` trains with any of them, so the
study can set their NMSE, time and memory beside end-to-end training.

**Problem parameter.** :class:`SparseCodingLasso` learns instead the one weight λ of the Lasso
:math:`\min_z \tfrac12\|Az - y\|^2 + \lambda\|z\|_1` (every sample its own problem) that minimises the
same recovery error at the Lasso's solution, by implicit differentiation on the support. Solving the
Lasso with that λ still needs FISTA's many iterations; the network needs K layers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from unrolled.bilevel.problems import BilevelProblem
from unrolled.layers.base import UnrolledISTA
from unrolled.metrics import nmse_db
from unrolled.problems.base import seeded_generator
from unrolled.problems.sparse_coding import SparseCoding

# Lower bound of the Lasso weight, relative to the weight above which every solution is 0.
MIN_REG_FRACTION = 1e-4


def _layers(network: UnrolledISTA, first: int, last: int, state, y: Tensor):
    for k in range(first, last):
        state = network.layer(k, state, y)
    return state


def network_hypergradient(network: UnrolledISTA, y: Tensor, x: Tensor, *, truncate: int | None = None, checkpoint_every: int | None = None) -> float:
    r"""Accumulate :math:`\nabla_h` of the recovery error :math:`\sum\|x_K - x\|^2/\sum\|x\|^2` into the network's ``.grad``; return the error.

    Args:
        network: an unrolled network whose ``layer(k, state, y)`` maps one state to the next.
        y, x: measurements (B, m) and true codes (B, n).
        truncate: back-propagate through the last T layers only; the first K − T run without a graph.
        checkpoint_every: keep the state every c layers and recompute the others in the backward pass.
    """
    K = network.n_layers
    if truncate is not None and not 1 <= truncate <= K:
        raise ValueError(f"truncate must lie in 1..n_layers ({K}), got {truncate}.")
    if checkpoint_every is not None and checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be >= 1, got {checkpoint_every}.")
    tracked = K if truncate is None else truncate
    state = network.initial_state(y)
    with torch.no_grad():
        state = _layers(network, 0, K - tracked, state, y)
    if checkpoint_every is None:
        state = _layers(network, K - tracked, K, state, y)
    else:
        # The reentrant form recomputes each segment inside the backward pass as an ordinary forward pass, so
        # SavedTensorMemory counts its saved tensors. It needs an input that requires grad for the gradient to
        # flow, and it accumulates the parameters' gradients itself through backward(), which is called below.
        state = state.detach().requires_grad_(True)
        start = K - tracked
        while start < K:
            stop = min(start + checkpoint_every, K)
            state = checkpoint(_layers, network, start, stop, state, y, use_reentrant=True)
            start = stop
    error = ((network.estimate(state) - x) ** 2).sum() / (x**2).sum()
    error.backward()
    return float(error.detach())


@dataclass
class NetworkTrace:
    """Test NMSE (dB, aggregate) of the last layer against optimiser steps and training seconds."""

    step: list[int] = field(default_factory=list)
    time: list[float] = field(default_factory=list)
    test_nmse_db: list[float] = field(default_factory=list)


@torch.no_grad()
def test_nmse_db(network: nn.Module, y: Tensor, x: Tensor) -> float:
    """Return the aggregate NMSE in dB of the network's last layer on (y, x)."""
    return float(nmse_db(network(y)[-1], x))


def fit_network(
    network: UnrolledISTA,
    problem: SparseCoding,
    *,
    n_steps: int,
    batch_size: int,
    lr: float,
    truncate: int | None = None,
    checkpoint_every: int | None = None,
    n_test: int = 1000,
    eval_every: int = 50,
    seed: int = 0,
) -> NetworkTrace:
    """Train the network's parameters with Adam on fresh samples, using the chosen hypergradient; return its trace.

    The test set is the problem's fixed test split (first ``n_test`` samples); evaluation time is
    excluded from the trace's clock.
    """
    if n_steps < 1 or batch_size < 1:
        raise ValueError(f"n_steps and batch_size must be >= 1, got {n_steps} and {batch_size}.")
    dtype = network.A.dtype
    y_test, x_test = (t.to(dtype) for t in problem.sample(n_test, seeded_generator(problem.seeds["test"]), "test"))
    generator = seeded_generator(problem.seeds["train"], seed)
    optimiser = torch.optim.Adam(network.parameters(), lr=lr)
    trace = NetworkTrace()
    elapsed = 0.0
    trace.step.append(0)
    trace.time.append(0.0)
    trace.test_nmse_db.append(test_nmse_db(network, y_test, x_test))
    for step in range(1, n_steps + 1):
        start = time.perf_counter()
        y, x = (t.to(dtype) for t in problem.sample(batch_size, generator))
        optimiser.zero_grad()
        error = network_hypergradient(network, y, x, truncate=truncate, checkpoint_every=checkpoint_every)
        if not torch.isfinite(torch.tensor(error)):
            raise FloatingPointError(f"the recovery error became {error} at step {step}; lower lr (now {lr}).")
        optimiser.step()
        elapsed += time.perf_counter() - start
        if step % eval_every == 0 or step == n_steps:
            trace.step.append(step)
            trace.time.append(elapsed)
            trace.test_nmse_db.append(test_nmse_db(network, y_test, x_test))
    return trace


class SparseCodingLasso(BilevelProblem):
    r"""The Lasso weight λ = h₀ ≥ 0 that minimises the recovery error of the Lasso solutions of a batch.

    Inner: :math:`\sum_b \tfrac12\|Az_b - y_b\|^2 + \lambda\|z_b\|_1` over Z (B, n), separable in the
    samples; outer: :math:`\sum_b\|z_b - x_b\|^2 / \sum_b\|x_b\|^2`. With more unknowns than
    measurements the inner problem has no unique solution at λ = 0, so λ is kept above
    ``MIN_REG_FRACTION · reg_max`` (refused below by ``check_hyper``, clipped by ``project_hyper``).
    """

    def __init__(self, A: Tensor, y: Tensor, x: Tensor) -> None:
        if y.ndim != 2 or y.shape[1] != A.shape[0] or x.shape != (y.shape[0], A.shape[1]):
            raise ValueError(f"expected y (B, {A.shape[0]}) and x (B, {A.shape[1]}), got {tuple(y.shape)} and {tuple(x.shape)}.")
        self.A, self.y, self.x = A.to(torch.float64), y.to(torch.float64), x.to(torch.float64)
        self._lipschitz = float(torch.linalg.matrix_norm(self.A, ord=2)) ** 2

    def initial_hyper(self) -> Tensor:
        return torch.full((1,), 0.1 * self.reg_max(), dtype=torch.float64)

    def initial_inner(self) -> Tensor:
        return torch.zeros_like(self.x)

    def inner_smooth(self, z: Tensor, hyper: Tensor) -> Tensor:
        return 0.5 * ((z @ self.A.T - self.y) ** 2).sum()

    def inner_gradient(self, z: Tensor, hyper: Tensor) -> Tensor:
        return (z @ self.A.T - self.y) @ self.A

    def inner_hvp_operator(self, z: Tensor, hyper: Tensor):
        return lambda v: (v @ self.A.T) @ self.A

    def inner_hvp(self, z: Tensor, hyper: Tensor, v: Tensor) -> Tensor:
        return self.inner_hvp_operator(z, hyper)(v)

    def inner_l1(self, hyper: Tensor) -> Tensor:
        return hyper[0]

    def outer(self, z: Tensor, hyper: Tensor) -> Tensor:
        return ((z - self.x) ** 2).sum() / (self.x**2).sum()

    def inner_lipschitz(self, hyper: Tensor) -> float:
        return self._lipschitz

    def reg_max(self) -> float:
        r"""Return :math:`\max_b\|A^\top y_b\|_\infty`, the smallest weight whose solutions are all 0."""
        return float((self.y @ self.A).abs().max())

    def check_hyper(self, hyper: Tensor) -> None:
        super().check_hyper(hyper)
        low = MIN_REG_FRACTION * self.reg_max()
        if hyper.shape != (1,) or float(hyper[0]) < low:
            raise ValueError(
                f"the Lasso weight must be one number >= {low:.3g} ({MIN_REG_FRACTION:g} · reg_max), got {hyper.tolist()}; "
                "project it with project_hyper."
            )

    def project_hyper(self, hyper: Tensor) -> Tensor:
        return hyper.clamp(min=MIN_REG_FRACTION * self.reg_max())
