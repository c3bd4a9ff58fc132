"""GLISTA: identity gates give LISTA-CP(SS), one layer against the gate formulas written out, defaults, gradients."""

from __future__ import annotations

import math

import pytest
import torch

from unrolled.layers import GLISTA, LISTACP, LISTACPSS
from unrolled.layers.base import support_bypass_fraction
from unrolled.metrics import nmse_db
from unrolled.problems import gaussian_operator

pytestmark = pytest.mark.usefixtures("single_torch_thread")

N_LAYERS = 8
REG = 0.05


def _data(m: int = 30, n: int = 60, batch: int = 6, seed: int = 0, dtype: torch.dtype = torch.float64):
    """Return A (m, n) with unit-norm columns, noisy y (batch, m) and the sparse x (batch, n) behind it."""
    A = gaussian_operator(m, n, seed)
    generator = torch.Generator().manual_seed(seed + 100)
    support = torch.rand(batch, n, generator=generator, dtype=torch.float64) < 0.15
    x = torch.randn(batch, n, generator=generator, dtype=torch.float64) * support
    y = x @ A.T + 0.01 * torch.randn(batch, m, generator=generator, dtype=torch.float64)
    return A.to(dtype), y.to(dtype), x.to(dtype)


def _soft_threshold_with_bypass(v: torch.Tensor, threshold: float, n_bypass: int) -> torch.Tensor:
    """Soft-threshold each row of ``v``, letting its ``n_bypass`` largest magnitudes pass unchanged."""
    out = torch.sign(v) * torch.clamp(v.abs() - threshold, min=0.0)
    for row, values in zip(out, v):
        largest = torch.argsort(values.abs(), descending=True)[:n_bypass]
        row[largest] = values[largest]
    return out


@pytest.mark.parametrize(
    ("kwargs", "reference_class"),
    [({}, LISTACPSS), ({"tied": True}, LISTACPSS), ({"support_selection": False}, LISTACP)],
)
def test_identity_gates_equal_lista_cpss(kwargs, reference_class):
    A, y, _ = _data(m=50, n=100, batch=4, seed=2)
    network = GLISTA(A, N_LAYERS, reg=REG, gain_scale=0.0, overshoot_scale=0.0, **kwargs)

    with torch.no_grad():
        out = network(y)
        expected = reference_class(A, N_LAYERS, reg=REG, **kwargs)(y)

    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_default_gates_change_output():
    # Guards the comparison above: the default gates are not the identity.
    A, y, _ = _data(m=50, n=100, batch=4, seed=2)

    with torch.no_grad():
        out = GLISTA(A, N_LAYERS, reg=REG)(y)
        expected = LISTACPSS(A, N_LAYERS, reg=REG)(y)

    assert float((out[-1] - expected[-1]).abs().max()) > 1e-3


@pytest.mark.parametrize("support_selection", [False, True])
def test_layer_matches_gate_formulas(support_selection):
    A, y, _ = _data(seed=3)
    network = GLISTA(A, 4, reg=0.2, support_selection=support_selection)
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for parameter in (network.gain_scale, network.gain_decay, network.overshoot_scale, network.threshold):
            parameter.copy_(0.05 + torch.rand(parameter.shape, generator=generator, dtype=torch.float64))
        network.gain_decay[1] = -network.gain_decay[1]
    x = torch.randn(6, 60, generator=generator, dtype=torch.float64) * (torch.rand(6, 60, generator=generator) < 0.3)
    k = 2
    mu, nu = network.gain_scale[k - 1].item(), network.gain_decay[k - 1].item()
    a, theta = network.overshoot_scale[k].item(), network.threshold[k].item()
    W = network.W[k].detach()
    n_bypass = math.floor(round(support_bypass_fraction(k + 1) * 60, 9)) if support_selection else 0

    gained = (1 + mu / (abs(nu) * x.abs() + 1e-3)) * x
    updated = _soft_threshold_with_bypass(gained + (y - gained @ A.T) @ W, theta, n_bypass)
    overshoot = 1 + a * theta / ((updated - x).abs() + 0.1)
    expected = overshoot * updated + (1 - overshoot) * x
    with torch.no_grad():
        out = network.layer(k, x, y)

    assert nu < 0
    assert n_bypass == (2 if support_selection else 0)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)


def test_first_layer_has_no_gain():
    A, y, _ = _data(seed=4)
    network = GLISTA(A, 3, reg=0.2, support_selection=False)
    threshold = network.threshold[0].item()

    with torch.no_grad():
        out = network(y)[0]

    updated = _soft_threshold_with_bypass(y @ network.W[0].detach(), threshold, 0)
    expected = (1 + threshold / (updated.abs() + 0.1)) * updated
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)


def test_default_gates_bounded():
    # With gain_scale = 1e-3 and gain_decay = 1 the gain adds at most 1e-3 to each entry. With
    # overshoot_scale = 1 the overshoot moves each entry at most one threshold past the update.
    A, y, _ = _data(seed=5)
    network = GLISTA(A, 3, reg=0.2, support_selection=False)
    x = torch.randn(6, 60, generator=torch.Generator().manual_seed(8), dtype=torch.float64)

    with torch.no_grad():
        added = network.gain(1, x) * x - x
        updated = x + 0.3
        moved = (network.overshoot(1, x, updated) - 1) * (updated - x)

    assert float(added.abs().max()) < 1e-3
    assert float(added.abs().max()) > 0.9e-3
    assert float(moved.abs().max()) < network.threshold[1].item()
    assert float(moved.abs().min()) == pytest.approx(network.threshold[1].item() * 0.3 / 0.4, rel=1e-12)


def test_untrained_close_to_lista_cpss():
    # The default gates keep the untrained network within 1 dB of LISTA-CPSS on the noiseless
    # 250 x 500 problem. Measured after 16 layers at reg 0.2: -7.88 dB against -7.10 dB.
    A = gaussian_operator(250, 500, 0)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(200, 500, generator=generator, dtype=torch.float64)
    x = x * (torch.rand(200, 500, generator=generator, dtype=torch.float64) < 0.1)
    y = x @ A.T

    with torch.no_grad():
        gated = float(nmse_db(GLISTA(A, 16, reg=0.2)(y)[-1], x))
        plain = float(nmse_db(LISTACPSS(A, 16, reg=0.2)(y)[-1], x))

    assert abs(gated - plain) < 1.0
    assert gated < plain


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, {"W": 0, "threshold": 0, "gain_scale": 1, "gain_decay": 1, "overshoot_scale": 0}),
        ({"tied": True}, {"threshold": 0, "gain_scale": 1, "gain_decay": 1, "overshoot_scale": 0}),
    ],
)
def test_per_layer_parameters(kwargs, expected):
    A, _, _ = _data()

    network = GLISTA(A, N_LAYERS, **kwargs)

    assert network.per_layer_parameters() == expected
    assert network.gain_scale.shape == network.gain_decay.shape == (N_LAYERS - 1,)
    assert network.overshoot_scale.shape == (N_LAYERS,)


def test_learnable_parameter_count():
    A, _, _ = _data()
    m, n = A.shape

    network = GLISTA(A, N_LAYERS)

    # LISTA-CPSS (one m x n matrix and one threshold per layer) plus 3K - 2 gate scalars.
    assert sum(p.numel() for p in network.parameters()) == N_LAYERS * (m * n + 1) + 3 * N_LAYERS - 2


@pytest.mark.parametrize("kwargs", [{}, {"tied": True}, {"support_selection": False}])
def test_gradients_reach_every_layer(kwargs):
    A, y, x = _data(seed=6)
    network = GLISTA(A, 4, reg=REG, **kwargs)

    (network(y)[-1] - x).square().sum().backward()

    for name, parameter in network.named_parameters():
        assert parameter.grad is not None, name
        assert bool(torch.isfinite(parameter.grad).all()), name
        per_entry = parameter.grad.reshape(parameter.shape[0], -1).abs().sum(1)
        assert bool((per_entry > 0).all()), f"{name}: {per_entry.tolist()}"


@pytest.mark.parametrize(("dtype", "atol"), [(torch.float64, 1e-12), (torch.float32, 1e-6)])
@pytest.mark.parametrize("support_selection", [False, True])
def test_batch_equals_samples(dtype, atol, support_selection):
    A, y, _ = _data(seed=7, dtype=dtype)
    network = GLISTA(A, N_LAYERS, reg=REG, support_selection=support_selection)

    with torch.no_grad():
        batched = network(y)
        one_by_one = torch.stack([network(sample) for sample in y], dim=1)

    assert not torch.isnan(batched).any()
    torch.testing.assert_close(one_by_one, batched, rtol=0, atol=atol)
