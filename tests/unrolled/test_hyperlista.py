"""HyperLISTA against an independent numpy loop, and its accuracy with three untrained constants."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unrolled.layers import HyperLISTA, alista_weight
from unrolled.metrics import nmse_db
from unrolled.problems import SparseCoding, gaussian_operator

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def _reference(A: np.ndarray, y: np.ndarray, n_layers: int, c1: float, c2: float, c3: float) -> np.ndarray:
    """HyperLISTA written out in numpy, one sample at a time."""
    W = alista_weight(torch.from_numpy(A)).numpy()
    A_pinv = np.linalg.pinv(A)
    product = W.T @ (A / np.linalg.norm(A, axis=0))
    coherence = np.abs(product - np.diag(np.diag(product))).max()
    n = A.shape[1]
    out = np.zeros((n_layers, y.shape[0], n))
    for i, b in enumerate(y):
        x = np.zeros(n)
        x_previous = np.zeros(n)
        measurement_norm = np.abs(A_pinv @ b).sum()
        for k in range(n_layers):
            residual = A @ x - b
            residual_norm = np.abs(A_pinv @ residual).sum()
            threshold = c1 * coherence * residual_norm
            momentum = c2 * coherence * np.count_nonzero(x)
            ratio = max(measurement_norm / max(residual_norm, np.finfo(float).tiny), 1.0)
            n_bypass = int(min(max(np.floor(c3 * np.log(ratio)), 0), n))
            v = x - W.T @ residual + momentum * (x - x_previous)
            new = np.sign(v) * np.maximum(np.abs(v) - threshold, 0.0)
            if n_bypass:
                largest = np.argsort(-np.abs(v), kind="stable")[:n_bypass]
                new[largest] = v[largest]
            x_previous, x = x, new
            out[k, i] = x
    return out


def test_matches_reference_loop():
    A = gaussian_operator(40, 80, 2)
    generator = torch.Generator().manual_seed(7)
    x = torch.randn(4, 80, generator=generator, dtype=torch.float64) * (torch.rand(4, 80, generator=generator) < 0.1)
    y = x @ A.T
    network = HyperLISTA(A, 10, c1=0.04, c2=0.02, c3=4.0)

    with torch.no_grad():
        estimates = network(y)

    expected = _reference(A.numpy(), y.numpy(), 10, 0.04, 0.02, 4.0)
    np.testing.assert_allclose(estimates.numpy(), expected, rtol=0, atol=1e-10)
    assert np.count_nonzero(expected[-1]) > 10


def test_untrained_constants_reach_50_db():
    # Default constants, no training: -55.4 dB at layer 16 on these 300 validation samples (float64).
    problem = SparseCoding()
    y, x = problem.fixed_set("val")
    network = HyperLISTA(problem.A, 16)

    with torch.no_grad():
        estimates = network(y[:300])

    assert nmse_db(estimates[-1], x[:300]).item() < -50.0
    assert nmse_db(estimates[7], x[:300]).item() < -25.0


def test_weights_hold_only_the_constants():
    A = gaussian_operator(20, 40, 0)

    network = HyperLISTA(A, 16)

    assert sorted(network.state_dict()) == ["A", "c1", "c2"]
    assert network.per_layer_parameters() == {}


@pytest.mark.parametrize("name", ["c1", "c2", "c3"])
def test_negative_constant_rejected(name):
    A = gaussian_operator(20, 40, 0)

    with pytest.raises(ValueError, match=f"{name} must be a finite number >= 0, got -1.0"):
        HyperLISTA(A, 4, **{name: -1.0})
