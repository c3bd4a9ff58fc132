"""LAMP against an AMP loop written out here, its Onsager coefficient, AMP against ISTA on a noiseless problem, gradients."""

from __future__ import annotations

import math

import pytest
import torch

from unrolled.layers import LAMP
from unrolled.layers.lamp import AMP_THRESHOLD_SCALE
from unrolled.metrics import nmse_db
from unrolled.problems import gaussian_operator
from unrolled.solvers import ista

pytestmark = pytest.mark.usefixtures("single_torch_thread")

N_LAYERS = 10


def _data(m: int = 50, n: int = 100, batch: int = 6, seed: int = 0, noise_std: float = 0.01, dtype: torch.dtype = torch.float64):
    """Return A (m, n) with unit-norm columns, y (batch, m) and the Bernoulli(0.1)-Gaussian x (batch, n) behind it."""
    A = gaussian_operator(m, n, seed)
    generator = torch.Generator().manual_seed(seed + 100)
    support = torch.rand(batch, n, generator=generator, dtype=torch.float64) < 0.1
    x = torch.randn(batch, n, generator=generator, dtype=torch.float64) * support
    y = x @ A.T + noise_std * torch.randn(batch, m, generator=generator, dtype=torch.float64)
    return A.to(dtype), y.to(dtype), x.to(dtype)


def _amp(A: torch.Tensor, y: torch.Tensor, alpha: float, max_iter: int, onsager: bool = True) -> list[torch.Tensor]:
    """Run AMP with soft thresholding at alpha·‖v‖/√m and return every iterate. ``onsager=False`` drops the b·v term."""
    m = A.shape[0]
    x = torch.zeros(*y.shape[:-1], A.shape[1], dtype=y.dtype)
    v = torch.zeros_like(y)
    iterates = []
    for _ in range(max_iter):
        b = (x != 0).sum(-1, keepdim=True).to(y.dtype) / m if onsager else 0.0
        v = y - x @ A.T + b * v
        threshold = alpha * torch.linalg.vector_norm(v, dim=-1, keepdim=True) / math.sqrt(m)
        r = x + v @ A
        x = torch.sign(r) * torch.clamp(r.abs() - threshold, min=0.0)
        iterates.append(x)
    return iterates


def test_initial_network_equals_amp():
    A, y, _ = _data()
    network = LAMP(A, N_LAYERS)

    with torch.no_grad():
        estimates = network(y)

    expected = _amp(A, y, AMP_THRESHOLD_SCALE, N_LAYERS)
    assert estimates.shape == (N_LAYERS, 6, 100)
    for k in range(N_LAYERS):
        torch.testing.assert_close(estimates[k], expected[k], rtol=0, atol=1e-10, msg=f"layer {k + 1}")


def test_amp_comparison_not_trivial():
    # Guards the comparison above: the Onsager term changes the iterates, so a network without it would fail.
    A, y, _ = _data()

    with_onsager = _amp(A, y, AMP_THRESHOLD_SCALE, N_LAYERS)[-1]
    without_onsager = _amp(A, y, AMP_THRESHOLD_SCALE, N_LAYERS, onsager=False)[-1]

    assert int((with_onsager != 0).sum()) > 30
    assert float((with_onsager - without_onsager).abs().max()) > 0.1


def test_onsager_coefficient_of_first_layer():
    A, y, _ = _data(seed=1)
    network = LAMP(A, 2, threshold_scale=1.3)
    with torch.no_grad():
        network.output_scale[0] = 0.5

    with torch.no_grad():
        x_next, residual, onsager = network.layer(0, network.initial_state(y), y)

    threshold = 1.3 * torch.linalg.vector_norm(y, dim=-1, keepdim=True) / math.sqrt(50)
    r = y @ A
    shrunk = torch.sign(r) * torch.clamp(r.abs() - threshold, min=0.0)
    torch.testing.assert_close(x_next, 0.5 * shrunk, rtol=0, atol=1e-12)
    torch.testing.assert_close(residual, -y, rtol=0, atol=0)
    torch.testing.assert_close(onsager, 0.5 * (shrunk != 0).sum(-1, keepdim=True).double() / 50, rtol=0, atol=0)
    assert bool((onsager > 0).all())


def test_noiseless_amp_beats_ista():
    # Noiseless 250 x 500, Bernoulli(0.1)-Gaussian x, 30 layers or iterations, float64. Measured:
    # -46.1 dB for untrained LAMP (AMP), and at best -7.9 dB for ISTA over the reg grid (FISTA: -17.9 dB).
    A, y, x = _data(m=250, n=500, batch=100, seed=0, noise_std=0.0)
    n_iter = 30

    with torch.no_grad():
        lamp_db = float(nmse_db(LAMP(A, n_iter)(y)[-1], x))
    ista_db = min(float(nmse_db(ista(A, y, reg, max_iter=n_iter).x, x)) for reg in (1e-3, 1e-2, 0.03, 0.1, 0.3))

    assert lamp_db < -38.0
    assert ista_db > -12.0
    assert lamp_db < ista_db - 25.0


def test_noiseless_amp_needs_onsager_term():
    # The same iteration without the Onsager term diverges, because B = A^T is a step of 1 > 2/L.
    A, y, x = _data(m=250, n=500, batch=100, seed=0, noise_std=0.0)

    without_onsager_db = float(nmse_db(_amp(A, y, AMP_THRESHOLD_SCALE, 30, onsager=False)[-1], x))

    assert without_onsager_db > 0.0


def test_zero_measurement_stays_finite():
    # y = 0 gives v = 0 and sigma = 0 in the first layer. The estimate must stay 0 and the gradients finite.
    A, y, _ = _data(seed=5)
    y[0] = 0.0
    network = LAMP(A, 3)

    out = network(y)
    out.square().sum().backward()

    assert float(out.detach()[:, 0].abs().max()) == 0.0
    for name, parameter in network.named_parameters():
        assert bool(torch.isfinite(parameter.grad).all()), name


def test_tied_starts_as_untied():
    A, y, _ = _data(seed=2)
    tied = LAMP(A, N_LAYERS, tied=True)

    with torch.no_grad():
        out = tied(y)
        expected = LAMP(A, N_LAYERS)(y)

    assert tied.W.shape == (1, 50, 100)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, {"W": 0, "threshold_scale": 0, "output_scale": 0}),
        ({"tied": True}, {"threshold_scale": 0, "output_scale": 0}),
    ],
)
def test_per_layer_parameters(kwargs, expected):
    A, _, _ = _data()

    network = LAMP(A, N_LAYERS, **kwargs)

    assert network.per_layer_parameters() == expected


def test_learnable_parameter_count():
    A, _, _ = _data()
    m, n = A.shape

    network = LAMP(A, N_LAYERS)

    # One B_t (stored as its m x n transpose), one threshold multiplier and one output scale per layer.
    assert sum(p.numel() for p in network.parameters()) == N_LAYERS * (m * n + 2)
    torch.testing.assert_close(network.W.detach(), A.expand(N_LAYERS, m, n), rtol=0, atol=0)


@pytest.mark.parametrize("kwargs", [{}, {"tied": True}])
def test_gradients_reach_every_layer(kwargs):
    A, y, x = _data(seed=3)
    network = LAMP(A, 4, **kwargs)

    (network(y)[-1] - x).square().sum().backward()

    for name, parameter in network.named_parameters():
        assert parameter.grad is not None, name
        assert bool(torch.isfinite(parameter.grad).all()), name
        per_entry = parameter.grad.reshape(parameter.shape[0], -1).abs().sum(1)
        assert bool((per_entry > 0).all()), f"{name}: {per_entry.tolist()}"


@pytest.mark.parametrize(("dtype", "atol"), [(torch.float64, 1e-12), (torch.float32, 1e-6)])
def test_batch_equals_samples(dtype, atol):
    A, y, _ = _data(seed=4, dtype=dtype)
    network = LAMP(A, N_LAYERS)

    with torch.no_grad():
        batched = network(y)
        one_by_one = torch.stack([network(sample) for sample in y], dim=1)

    assert not torch.isnan(batched).any()
    torch.testing.assert_close(one_by_one, batched, rtol=0, atol=atol)
