"""Step-LISTA against ISTA: equal at 1/L, and an independent loop with per-layer steps."""

from __future__ import annotations

import pytest
import torch

from unrolled.layers import SLISTA
from unrolled.operators import lipschitz_constant
from unrolled.problems import gaussian_operator
from unrolled.solvers import ista

pytestmark = pytest.mark.usefixtures("single_torch_thread")

REG = 0.05


def _data(m: int = 20, n: int = 40, batch: int = 5, seed: int = 0):
    A = gaussian_operator(m, n, seed)
    generator = torch.Generator().manual_seed(seed + 100)
    x = torch.randn(batch, n, generator=generator, dtype=torch.float64) * (torch.rand(batch, n, generator=generator) < 0.15)
    return A, x @ A.T + 0.01 * torch.randn(batch, m, generator=generator, dtype=torch.float64)


def test_initial_steps_reproduce_ista():
    A, y = _data()
    network = SLISTA(A, 10, reg=REG)

    with torch.no_grad():
        estimates = network(y)

    for k in (1, 5, 10):
        torch.testing.assert_close(estimates[k - 1], ista(A, y, REG, max_iter=k).x, rtol=0, atol=1e-13)


def test_learned_steps_match_reference_loop():
    A, y = _data(seed=1)
    steps = torch.linspace(0.5, 1.8, 8, dtype=torch.float64) / lipschitz_constant(A)
    network = SLISTA(A, 8, reg=REG)
    with torch.no_grad():
        network.step_size.copy_(steps)

        estimates = network(y)

    x = torch.zeros(y.shape[0], A.shape[1], dtype=torch.float64)
    for k, step in enumerate(steps):
        v = x - step * (x @ A.T - y) @ A
        x = torch.sign(v) * torch.clamp(v.abs() - step * REG, min=0.0)
        torch.testing.assert_close(estimates[k], x, rtol=0, atol=1e-13, msg=f"layer {k + 1}")


def test_only_steps_are_learned():
    A, _ = _data()

    network = SLISTA(A, 6, reg=REG)

    assert [name for name, _ in network.named_parameters()] == ["step_size"]
    assert network.per_layer_parameters() == {"step_size": 0}


def test_negative_reg_rejected():
    A, _ = _data()

    with pytest.raises(ValueError, match="reg must be finite and >= 0, got -0.1"):
        SLISTA(A, 4, reg=-0.1)
