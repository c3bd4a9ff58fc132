"""Tests of ALISTA's parameters as hyperparameters.

They check the hypergradient modes against plain autograd, the training traces and the sparse-coding Lasso weight.
"""

from __future__ import annotations

import pytest
import torch

from unrolled.bilevel.hypergradient import implicit_hypergradient, unrolled_hypergradient
from unrolled.memory import SavedTensorMemory
from unrolled.bilevel.network import SparseCodingLasso, fit_network, network_hypergradient
from unrolled.layers.alista import ALISTA
from unrolled.problems.base import seeded_generator
from unrolled.problems.sparse_coding import SparseCoding

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def _setting():
    problem = SparseCoding(m=20, n=40, snr_db=30, n_test=50)
    y, x = problem.sample(17, seeded_generator(5))
    return problem, y, x


def _gradients(network) -> list[torch.Tensor]:
    return [parameter.grad.clone() for parameter in network.parameters()]


def test_network_hypergradient_matches_autograd():
    """Full and checkpointed network hypergradients equal autograd through the forward pass."""
    problem, y, x = _setting()
    network = ALISTA(problem.A, 6)
    loss = ((network(y)[-1] - x) ** 2).sum() / (x**2).sum()
    reference = torch.autograd.grad(loss, list(network.parameters()))
    error = network_hypergradient(network, y, x)
    assert error == pytest.approx(float(loss.detach()), rel=1e-12)
    for ours, theirs in zip(_gradients(network), reference):
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=0)
    network.zero_grad()
    network_hypergradient(network, y, x, checkpoint_every=2)
    for ours, theirs in zip(_gradients(network), reference):
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=0)


def test_truncated_hypergradient_last_layers_only():
    """Truncation to the last 2 of 6 layers gives nonzero gradients to those layers only."""
    problem, y, x = _setting()
    network = ALISTA(problem.A, 6)
    network_hypergradient(network, y, x, truncate=2)
    for parameter in (network.step_size, network.threshold):
        assert bool((parameter.grad[:4] == 0).all())
        assert bool((parameter.grad[4:] != 0).all())
    with pytest.raises(ValueError, match=r"truncate must lie in 1..n_layers \(6\), got 7"):
        network_hypergradient(network, y, x, truncate=7)


def test_checkpointing_and_truncation_save_memory():
    problem, y, x = _setting()

    def peak(**options) -> int:
        network = ALISTA(problem.A, 12)
        with SavedTensorMemory() as meter:
            network_hypergradient(network, y, x, **options)
        return meter.peak_bytes

    full = peak()
    assert peak(truncate=3) < full / 2
    assert peak(checkpoint_every=3) < full / 2


def test_fit_network_improves_test_nmse():
    """Training improves the test NMSE by more than 1 dB and records its trace."""
    problem, _, _ = _setting()
    torch.manual_seed(0)
    network = ALISTA(problem.A, 6)
    trace = fit_network(network, problem, n_steps=30, batch_size=32, lr=1e-2, n_test=50, eval_every=10)
    assert trace.step == [0, 10, 20, 30]
    assert trace.time == sorted(trace.time)
    assert trace.test_nmse_db[-1] < trace.test_nmse_db[0] - 1.0


def test_sparse_coding_lasso_hypergradient():
    """The sparse-coding Lasso hypergradient matches finite differences and unrolled ISTA, and bad inputs raise."""
    problem, y, x = _setting()
    lasso = SparseCodingLasso(problem.A, y, x)
    hyper = torch.tensor([0.05 * lasso.reg_max()], dtype=torch.float64)
    implicit = float(implicit_hypergradient(lasso, hyper, inner_tol=1e-11).gradient[0])
    base = lasso.solve_inner(hyper, tol=1e-12).z
    eps = 1e-7
    plus = lasso.outer(lasso.solve_inner(hyper + eps, base, tol=1e-12).z, hyper)
    minus = lasso.outer(lasso.solve_inner(hyper - eps, base, tol=1e-12).z, hyper)
    assert implicit == pytest.approx(float(plus - minus) / (2 * eps), rel=1e-4)
    assert implicit == pytest.approx(float(unrolled_hypergradient(lasso, hyper, max_iter=5000).gradient[0]), rel=1e-3)
    with pytest.raises(ValueError, match="the Lasso weight must be one number >="):
        lasso.check_hyper(torch.zeros(1, dtype=torch.float64))
    assert float(lasso.project_hyper(torch.zeros(1, dtype=torch.float64))[0]) > 0
    with pytest.raises(ValueError, match=r"expected y \(B, 20\) and x \(B, 40\)"):
        SparseCodingLasso(problem.A, y[:, :5], x)
