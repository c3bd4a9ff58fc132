"""Unrolled ISTA networks against classical ISTA, the ALISTA weight, support selection and gradients."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from unrolled.layers import (
    ALISTA,
    LISTA,
    LISTACP,
    LISTACPSS,
    LISTASS,
    TiLISTA,
    alista_weight,
    mutual_coherence,
    support_bypass_fraction,
)
from unrolled.operators import lipschitz_constant
from unrolled.problems import gaussian_operator
from unrolled.prox import prox_l1_support_selection
from unrolled.solvers import ista

pytestmark = pytest.mark.usefixtures("single_torch_thread")

N_LAYERS = 8
REG = 0.05


def _data(m: int = 20, n: int = 40, batch: int = 5, seed: int = 0):
    """Return A (m, n) with unit-norm columns, y (batch, m) and the sparse x (batch, n) behind it."""
    A = gaussian_operator(m, n, seed)
    generator = torch.Generator().manual_seed(seed + 100)
    support = torch.rand(batch, n, generator=generator, dtype=torch.float64) < 0.15
    x = torch.randn(batch, n, generator=generator, dtype=torch.float64) * support
    y = x @ A.T + 0.01 * torch.randn(batch, m, generator=generator, dtype=torch.float64)
    return A, y, x


def _classical_networks(A: torch.Tensor) -> dict[str, nn.Module]:
    """Build every network at its initial, classical parameters: W = A, step 1/L, threshold reg/L."""
    lipschitz = lipschitz_constant(A)
    return {
        "lista": LISTA(A, N_LAYERS, reg=REG),
        "lista_tied": LISTA(A, N_LAYERS, reg=REG, tied=True),
        "lista_cp": LISTACP(A, N_LAYERS, reg=REG),
        "lista_cp_tied": LISTACP(A, N_LAYERS, reg=REG, tied=True),
        "alista": ALISTA(A, N_LAYERS, reg=REG, step_size=1.0 / lipschitz, support_selection=False, W=A),
    }


@pytest.mark.parametrize("name", ["lista", "lista_tied", "lista_cp", "lista_cp_tied", "alista"])
def test_classical_parameters_reproduce_ista(name):
    A, y, _ = _data()
    network = _classical_networks(A)[name]

    with torch.no_grad():
        estimates = network(y)

    assert estimates.shape == (N_LAYERS, 5, 40)
    for k in range(1, N_LAYERS + 1):
        expected = ista(A, y, REG, max_iter=k).x
        torch.testing.assert_close(estimates[k - 1], expected, rtol=0, atol=1e-6, msg=f"layer {k}")


def test_classical_parameters_match_tightly():
    # LISTA-CP at its initial parameters runs exactly the ISTA update, so it agrees to rounding.
    A, y, _ = _data(seed=1)
    network = LISTACP(A, N_LAYERS, reg=REG)

    with torch.no_grad():
        last = network(y)[-1]

    torch.testing.assert_close(last, ista(A, y, REG, max_iter=N_LAYERS).x, rtol=0, atol=1e-13)


def test_classical_estimates_not_trivial():
    # Guards the comparison above against an all-zero ISTA run, which any network would match.
    A, y, _ = _data()

    x = ista(A, y, REG, max_iter=N_LAYERS).x

    assert int((x != 0).sum()) > 10


def test_forward_fewer_layers():
    A, y, _ = _data()
    network = LISTACP(A, N_LAYERS, reg=REG)

    with torch.no_grad():
        full = network(y)
        partial = network(y, n_layers=3)

    assert partial.shape == (3, 5, 40)
    torch.testing.assert_close(partial, full[:3], rtol=0, atol=0)


@pytest.mark.parametrize("n_layers", [0, N_LAYERS + 1])
def test_forward_n_layers_out_of_range(n_layers):
    A, y, _ = _data()
    network = LISTACP(A, N_LAYERS, reg=REG)

    with pytest.raises(ValueError, match=rf"n_layers must lie in \[1, {N_LAYERS}\], got {n_layers}"):
        network(y, n_layers=n_layers)


@pytest.mark.parametrize("network_class", [LISTA, LISTACP, ALISTA])
def test_zero_layers_rejected(network_class):
    A, _, _ = _data()

    with pytest.raises(ValueError, match="n_layers must be an integer >= 1, got 0"):
        network_class(A, 0)


def test_forward_y_wrong_length():
    A, _, _ = _data()
    network = LISTACP(A, N_LAYERS, reg=REG)

    with pytest.raises(ValueError, match=r"m = A.shape\[0\] = 20, got shape \(5, 19\)"):
        network(torch.ones(5, 19, dtype=torch.float64))


def _mutual_coherence(A: torch.Tensor) -> float:
    columns = A / torch.linalg.vector_norm(A, dim=0, keepdim=True)
    gram = columns.T @ columns
    return float((gram - torch.diag(gram.diagonal())).abs().max())


@pytest.mark.parametrize(("m", "n", "seed"), [(250, 500, 0), (20, 40, 1), (30, 60, 3)])
def test_alista_weight_unit_diagonal(m, n, seed):
    A = gaussian_operator(m, n, seed)

    product = alista_weight(A).T @ A

    torch.testing.assert_close(product.diagonal(), torch.ones(n, dtype=torch.float64), rtol=0, atol=1e-10)


@pytest.mark.parametrize(("m", "n", "seed"), [(250, 500, 0), (20, 40, 1), (30, 60, 3)])
def test_alista_weight_coherence_below_A(m, n, seed):
    # NOTE: no known theorem states that the least-Frobenius weight lowers the largest off-diagonal entry.
    # This test checks it on three seeded Gaussian operators, where it does by a clear margin.
    A = gaussian_operator(m, n, seed)

    product = alista_weight(A).T @ A
    off_diagonal = (product - torch.diag(product.diagonal())).abs().max()

    assert float(off_diagonal) <= _mutual_coherence(A)


def test_alista_weight_float32():
    A = gaussian_operator(20, 40, 0).float()

    weight = alista_weight(A)

    assert weight.dtype == torch.float32
    torch.testing.assert_close((weight.T @ A).diagonal(), torch.ones(40), rtol=0, atol=1e-5)


def test_alista_weight_tall_rejected():
    with pytest.raises(ValueError, match=r"needs m <= n \(a wide A\), got shape \(40, 20\)"):
        alista_weight(torch.randn(40, 20, generator=torch.Generator().manual_seed(0), dtype=torch.float64))


def test_alista_default_weight():
    A, _, _ = _data()

    network = ALISTA(A, N_LAYERS)

    torch.testing.assert_close(network.W, alista_weight(A), rtol=0, atol=0)


def test_alista_weight_shape_mismatch():
    A, _, _ = _data()

    with pytest.raises(ValueError, match=r"W must have the shape of A, \(20, 40\), got \(20, 39\)"):
        ALISTA(A, N_LAYERS, W=torch.ones(20, 39, dtype=torch.float64))


@pytest.mark.parametrize("k", range(1, 16))
def test_support_percent_per_layer(k):
    assert support_bypass_fraction(k) == pytest.approx(min(1.2 * k, 13.0) / 100, rel=1e-12)


@pytest.mark.parametrize("n", [40, 500, 512, 1024])
@pytest.mark.parametrize("k", range(1, 16))
def test_support_selection_bypass_count(n, k):
    # floor(min(1.2 k, 13) percent of n) in exact integer arithmetic: min(12 k, 130) n / 1000.
    expected = min(12 * k, 130) * n // 1000
    generator = torch.Generator().manual_seed(k)
    x = torch.randn(3, n, generator=generator, dtype=torch.float64)

    # A threshold above every |x_i| zeroes all entries that do not bypass it.
    out = prox_l1_support_selection(x, 100.0, support_bypass_fraction(k))
    largest = torch.topk(x.abs(), expected, dim=-1).indices if expected else None

    assert (out != 0).sum(-1).tolist() == [expected] * 3
    if largest is not None:
        torch.testing.assert_close(out.gather(-1, largest), x.gather(-1, largest), rtol=0, atol=0)


def test_network_bypass_fraction_per_layer():
    A, _, _ = _data()
    with_selection = ALISTA(A, 15)
    without_selection = ALISTA(A, 15, support_selection=False)

    for k in range(15):
        assert with_selection.bypass_fraction(k) == support_bypass_fraction(k + 1)
        assert without_selection.bypass_fraction(k) == 0.0


def _numpy_support_selection(v: np.ndarray, threshold: float, percent: float) -> np.ndarray:
    """Apply support selection in numpy: the floor(percent · n / 100) largest |v_i| of each row pass unchanged."""
    n_bypass = math.floor(round(percent * v.shape[-1] / 100, 9))
    out = np.sign(v) * np.maximum(np.abs(v) - threshold, 0.0)
    for row, values in zip(out, v):
        largest = np.argsort(-np.abs(values))[:n_bypass]
        row[largest] = values[largest]
    return out


def test_alista_support_selection_matches_numpy():
    A, y, _ = _data(m=50, n=100, batch=4, seed=2)
    n_layers = 12
    weight = alista_weight(A)
    network = ALISTA(A, n_layers, reg=REG, step_size=0.8)

    with torch.no_grad():
        estimates = network(y)

    A_np, y_np, W_np = A.numpy(), y.numpy(), weight.numpy()
    x = np.zeros((4, 100))
    for k in range(1, n_layers + 1):
        v = x - 0.8 * (x @ A_np.T - y_np) @ W_np
        x = _numpy_support_selection(v, 0.8 * REG, min(1.2 * k, 13.0))
        np.testing.assert_allclose(estimates[k - 1].numpy(), x, rtol=0, atol=1e-12, err_msg=f"layer {k}")


def _trainable_networks(A: torch.Tensor) -> dict[str, nn.Module]:
    return {
        "lista": LISTA(A, 4, reg=REG),
        "lista_tied": LISTA(A, 4, reg=REG, tied=True),
        "lista_support_selection": LISTA(A, 4, reg=REG, support_selection=True),
        "lista_cp": LISTACP(A, 4, reg=REG),
        "lista_cp_support_selection": LISTACP(A, 4, reg=REG, support_selection=True),
        "alista": ALISTA(A, 4, reg=REG),
    }


NETWORK_NAMES = ["lista", "lista_tied", "lista_support_selection", "lista_cp", "lista_cp_support_selection", "alista"]


@pytest.mark.parametrize("name", NETWORK_NAMES)
def test_every_parameter_gets_finite_gradient(name):
    A, y, x = _data(seed=3)
    network = _trainable_networks(A)[name]

    loss = (network(y) - x).square().sum()
    loss.backward()

    for parameter_name, parameter in network.named_parameters():
        assert parameter.grad is not None, parameter_name
        assert bool(torch.isfinite(parameter.grad).all()), parameter_name
        assert float(parameter.grad.abs().max()) > 0, parameter_name


@pytest.mark.parametrize("name", NETWORK_NAMES)
def test_learnable_parameter_counts(name):
    A, _, _ = _data()
    m, n = A.shape
    expected = {
        "lista": 4 * n * m + 3 * n * n + 4,
        "lista_tied": n * m + n * n + 4,
        "lista_support_selection": 4 * n * m + 3 * n * n + 4,
        "lista_cp": 4 * m * n + 4,
        "lista_cp_support_selection": 4 * m * n + 4,
        "alista": 2 * 4,
    }

    network = _trainable_networks(A)[name]

    assert sum(p.numel() for p in network.parameters() if p.requires_grad) == expected[name]


@pytest.mark.parametrize("name", NETWORK_NAMES)
def test_batch_size_one(name):
    A, y, _ = _data(seed=4)
    network = _trainable_networks(A)[name]

    with torch.no_grad():
        single = network(y[:1])
        batched = network(y)

    assert single.shape == (4, 1, 40)
    torch.testing.assert_close(single, batched[:, :1], rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", NETWORK_NAMES)
def test_unbatched_measurement(name):
    A, y, _ = _data(seed=4)
    network = _trainable_networks(A)[name]

    with torch.no_grad():
        single = network(y[0])
        batched = network(y)

    assert single.shape == (4, 40)
    torch.testing.assert_close(single, batched[:, 0], rtol=0, atol=1e-12)


class _OneLayer(nn.Module):
    """Apply layer ``k`` of ``network`` to ``(x, y)``, so ``functional_call`` can swap its parameters."""

    def __init__(self, network: nn.Module, k: int) -> None:
        super().__init__()
        self.network = network
        self.k = k

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.network.layer(self.k, x, y)


def _pre_threshold_margin(network: nn.Module, x: torch.Tensor, y: torch.Tensor, k: int) -> float:
    """Return the smallest distance of the layer's pre-threshold values to the kinks at 0 and at ±threshold."""
    with torch.no_grad():
        if isinstance(network, LISTA):
            v = y @ network.W[k].T + x @ network.S[k].T
        elif isinstance(network, LISTACP):
            v = x - (x @ network.A.T - y) @ network.W[k]
        else:
            v = x - network.step_size[k] * ((x @ network.A.T - y) @ network.W)
        threshold = float(network.threshold[k])
    return float(torch.minimum(v.abs(), (v.abs() - threshold).abs()).min())


@pytest.mark.parametrize("name", ["lista", "lista_cp", "alista"])
def test_gradcheck_one_layer(name):
    A, y, _ = _data(m=6, n=10, batch=2, seed=5)
    network = _trainable_networks(A)[name]
    generator = torch.Generator().manual_seed(6)
    x = torch.randn(2, 10, generator=generator, dtype=torch.float64)
    k = 1
    wrapper = _OneLayer(network, k)
    names = [f"network.{parameter_name}" for parameter_name, _ in network.named_parameters()]
    parameters = [p.detach().clone().requires_grad_(True) for p in network.parameters()]
    assert _pre_threshold_margin(network, x, y, k) > 1e-4

    def layer(x, y, *values):
        return torch.func.functional_call(wrapper, dict(zip(names, values)), (x, y))

    inputs = (x.requires_grad_(True), y.clone().requires_grad_(True), *parameters)

    assert torch.autograd.gradcheck(layer, inputs)


def test_mutual_coherence_matches_reference():
    A = gaussian_operator(30, 60, 3)

    assert mutual_coherence(A) == pytest.approx(_mutual_coherence(A), rel=1e-12)


def test_generalised_coherence_of_alista_weight():
    A = gaussian_operator(250, 500, 0)
    weight = alista_weight(A)
    product = weight.T @ A
    expected = (product - torch.diag(product.diagonal())).abs().max()

    assert mutual_coherence(A, weight) == pytest.approx(float(expected), rel=1e-12)
    assert mutual_coherence(A, weight) < mutual_coherence(A)


@pytest.mark.parametrize(("selected", "plain"), [(LISTASS, LISTA), (LISTACPSS, LISTACP)])
def test_support_selection_variants(selected, plain):
    A, y, _ = _data(m=50, n=100, batch=4, seed=2)

    with torch.no_grad():
        out = selected(A, N_LAYERS, reg=REG)(y)
        expected = plain(A, N_LAYERS, reg=REG, support_selection=True)(y)
        without = plain(A, N_LAYERS, reg=REG)(y)

    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    assert (out[-1] - without[-1]).abs().max() > 1e-3


def test_tilista_starts_at_alista():
    A, y, _ = _data(m=50, n=100, batch=4, seed=2)
    tilista = TiLISTA(A, N_LAYERS, reg=REG, step_size=0.8)

    with torch.no_grad():
        out = tilista(y)
        expected = ALISTA(A, N_LAYERS, reg=REG, step_size=0.8)(y)

    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    assert isinstance(tilista.W, nn.Parameter)
    assert "W" in dict(tilista.named_parameters())


def test_alista_analytic_weight_not_stored():
    A, _, _ = _data()

    assert "W" not in ALISTA(A, N_LAYERS).state_dict()
    assert "W" in ALISTA(A, N_LAYERS, W=A).state_dict()


def test_alista_stored_weight_adopted_on_load():
    A, y, _ = _data()
    custom = ALISTA(A, N_LAYERS, W=A)
    rebuilt = ALISTA(A, N_LAYERS)

    rebuilt.load_state_dict(custom.state_dict(), strict=True)

    torch.testing.assert_close(rebuilt.W, A, rtol=0, atol=0)
    assert "W" in rebuilt.state_dict()
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(y), custom(y), rtol=0, atol=0)
