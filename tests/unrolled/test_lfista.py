"""LFISTA against classical FISTA at initialisation, its momentum schedule, LISTA-CP(SS) without momentum, and gradients."""

from __future__ import annotations

import math

import pytest
import torch

from unrolled.layers import LFISTA, LISTACP, LISTACPSS
from unrolled.layers.lfista import fista_momentum
from unrolled.problems import gaussian_operator
from unrolled.solvers import fista

pytestmark = pytest.mark.usefixtures("single_torch_thread")

N_LAYERS = 12
REG = 0.05


def _data(m: int = 30, n: int = 60, batch: int = 6, seed: int = 0, dtype: torch.dtype = torch.float64):
    """Return A (m, n) with unit-norm columns, noisy y (batch, m) and the sparse x (batch, n) behind it."""
    A = gaussian_operator(m, n, seed)
    generator = torch.Generator().manual_seed(seed + 100)
    support = torch.rand(batch, n, generator=generator, dtype=torch.float64) < 0.15
    x = torch.randn(batch, n, generator=generator, dtype=torch.float64) * support
    y = x @ A.T + 0.01 * torch.randn(batch, m, generator=generator, dtype=torch.float64)
    return A.to(dtype), y.to(dtype), x.to(dtype)


def test_initial_network_equals_fista():
    A, y, _ = _data()
    network = LFISTA(A, N_LAYERS, reg=REG)

    with torch.no_grad():
        estimates = network(y)

    assert estimates.shape == (N_LAYERS, 6, 60)
    for k in range(1, N_LAYERS + 1):
        expected = fista(A, y, REG, max_iter=k).x
        torch.testing.assert_close(estimates[k - 1], expected, rtol=0, atol=1e-10, msg=f"layer {k}")


def test_fista_comparison_not_trivial():
    # Guards the comparison above: FISTA's iterates are non-zero and differ from ISTA's after a few
    # iterations, so a network without momentum would fail it.
    A, y, _ = _data()

    with torch.no_grad():
        lfista_last = LFISTA(A, N_LAYERS, reg=REG)(y)[-1]
        lista_cp_last = LISTACP(A, N_LAYERS, reg=REG)(y)[-1]

    assert int((lfista_last != 0).sum()) > 20
    assert float((lfista_last - lista_cp_last).abs().max()) > 1e-2


def test_momentum_closed_form():
    t2 = (1 + math.sqrt(5)) / 2
    t3 = (1 + math.sqrt(1 + 4 * t2**2)) / 2
    t4 = (1 + math.sqrt(1 + 4 * t3**2)) / 2

    momentum = fista_momentum(3)

    assert momentum[0] == 0.0
    assert momentum[1] == pytest.approx((t2 - 1) / t3, rel=1e-15)
    assert momentum[2] == pytest.approx((t3 - 1) / t4, rel=1e-15)


def test_momentum_parameter_skips_first_layer():
    A, _, _ = _data()

    network = LFISTA(A, N_LAYERS)

    assert network.momentum.shape == (N_LAYERS - 1,)
    momentum = network.momentum.detach()
    torch.testing.assert_close(momentum, torch.tensor(fista_momentum(N_LAYERS)[1:], dtype=torch.float64), rtol=0, atol=0)
    assert bool((momentum.diff() > 0).all())
    assert float(momentum[0]) > 0
    assert float(momentum[-1]) < 1


@pytest.mark.parametrize(("support_selection", "reference_class"), [(False, LISTACP), (True, LISTACPSS)])
def test_zero_momentum_equals_lista_cp(support_selection, reference_class):
    A, y, _ = _data(m=50, n=100, batch=4, seed=2)
    network = LFISTA(A, N_LAYERS, reg=REG, support_selection=support_selection)
    with torch.no_grad():
        network.momentum.zero_()

    with torch.no_grad():
        out = network(y)
        expected = reference_class(A, N_LAYERS, reg=REG, support_selection=support_selection)(y)

    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_tied_starts_as_untied():
    A, y, _ = _data(seed=3)
    tied = LFISTA(A, N_LAYERS, reg=REG, tied=True)

    with torch.no_grad():
        out = tied(y)
        expected = LFISTA(A, N_LAYERS, reg=REG)(y)

    assert tied.W.shape == (1, 30, 60)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, {"W": 0, "threshold": 0, "momentum": 1}),
        ({"tied": True}, {"threshold": 0, "momentum": 1}),
    ],
)
def test_per_layer_parameters(kwargs, expected):
    A, _, _ = _data()

    network = LFISTA(A, N_LAYERS, **kwargs)

    assert network.per_layer_parameters() == expected


def test_learnable_parameter_count():
    A, _, _ = _data()
    m, n = A.shape

    network = LFISTA(A, N_LAYERS)

    # One m x n matrix and one threshold per layer, one momentum per layer after the first.
    assert sum(p.numel() for p in network.parameters()) == N_LAYERS * m * n + N_LAYERS + (N_LAYERS - 1)


def test_single_layer_has_no_momentum():
    A, y, _ = _data()
    network = LFISTA(A, 1, reg=REG)

    with torch.no_grad():
        out = network(y)

    assert network.momentum.shape == (0,)
    torch.testing.assert_close(out[0], fista(A, y, REG, max_iter=1).x, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kwargs", [{}, {"tied": True}, {"support_selection": True}])
def test_gradients_reach_every_layer(kwargs):
    A, y, x = _data(seed=4)
    network = LFISTA(A, 4, reg=REG, **kwargs)

    (network(y)[-1] - x).square().sum().backward()

    for name, parameter in network.named_parameters():
        assert parameter.grad is not None, name
        assert bool(torch.isfinite(parameter.grad).all()), name
        per_entry = parameter.grad.reshape(parameter.shape[0], -1).abs().sum(1)
        assert bool((per_entry > 0).all()), f"{name}: {per_entry.tolist()}"


@pytest.mark.parametrize(("dtype", "atol"), [(torch.float64, 1e-12), (torch.float32, 1e-6)])
@pytest.mark.parametrize("support_selection", [False, True])
def test_batch_equals_samples(dtype, atol, support_selection):
    A, y, _ = _data(seed=5, dtype=dtype)
    network = LFISTA(A, N_LAYERS, reg=REG, support_selection=support_selection)

    with torch.no_grad():
        batched = network(y)
        one_by_one = torch.stack([network(sample) for sample in y], dim=1)

    assert not torch.isnan(batched).any()
    torch.testing.assert_close(one_by_one, batched, rtol=0, atol=atol)
