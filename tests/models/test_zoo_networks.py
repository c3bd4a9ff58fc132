"""Every registered network: builds, batches consistently, stays finite and trains every parameter."""

from __future__ import annotations

import pytest
import torch

from models import NETWORKS, build_network
from unrolled.problems import SparseCoding

pytestmark = pytest.mark.usefixtures("single_torch_thread")

N_LAYERS = 6


@pytest.fixture(scope="module")
def problem() -> SparseCoding:
    # n = 100 lets support selection bypass a whole entry from layer 1 on (1.2 % of 100).
    return SparseCoding(m=50, n=100, snr_db=40, n_val=17, n_test=17)


def _network(name: str, problem: SparseCoding, dtype: torch.dtype = torch.float32):
    torch.manual_seed(0)
    return build_network(name, problem.A.to(dtype), N_LAYERS)


def test_registry_lists_the_family():
    expected = {
        "lista",
        "lista_ss",
        "lista_cp",
        "lista_cpss",
        "alista",
        "tilista",
        "lfista",
        "glista",
        "slista",
        "lamp",
        "hyperlista",
    }

    assert expected <= set(NETWORKS)


@pytest.mark.parametrize("name", sorted(NETWORKS))
@pytest.mark.parametrize("batch_size", [1, 17])
def test_forward_shape_and_finite(name, batch_size, problem):
    network = _network(name, problem)
    y, _ = problem.fixed_set("val")

    with torch.no_grad():
        estimates = network(y[:batch_size].float())

    assert estimates.shape == (N_LAYERS, batch_size, problem.n)
    assert torch.isfinite(estimates).all()
    assert estimates[-1].abs().sum() > 0


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_batch_equals_samples_one_by_one(name, problem):
    network = _network(name, problem)
    y, _ = problem.fixed_set("val")
    y = y.float()

    with torch.no_grad():
        batched = network(y)
        single = torch.stack([network(y[i : i + 1])[:, 0] for i in range(y.shape[0])], dim=1)

    torch.testing.assert_close(batched, single, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_every_parameter_gets_a_gradient(name, problem):
    network = _network(name, problem)
    y, x = problem.fixed_set("val")

    loss = (network(y.float())[-1] - x.float()).square().mean()
    loss.backward()

    parameters = dict(network.named_parameters())
    assert parameters, f"{name} has no learnable parameter"
    for parameter_name, parameter in parameters.items():
        assert parameter.grad is not None, f"{name}.{parameter_name} gets no gradient"
        assert torch.isfinite(parameter.grad).all(), f"{name}.{parameter_name} has a non-finite gradient"
        assert parameter.grad.abs().sum() > 0, f"{name}.{parameter_name} has an all-zero gradient"


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_per_layer_parameters_index_layers(name, problem):
    network = _network(name, problem)
    parameters = dict(network.named_parameters())

    for parameter_name, offset in network.per_layer_parameters().items():
        assert parameter_name in parameters, f"{name} lists unknown parameter {parameter_name}"
        assert parameters[parameter_name].shape[0] + offset == N_LAYERS, f"{name}.{parameter_name}"


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_state_dict_round_trip(name, problem):
    # A card rebuilds the network from A and its constructor arguments, then loads the weights strictly.
    network = _network(name, problem)
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.mul_(1.01)
    rebuilt = build_network(name, network.A, N_LAYERS)
    rebuilt.load_state_dict(network.state_dict(), strict=True)
    y, _ = problem.fixed_set("val")

    with torch.no_grad():
        torch.testing.assert_close(rebuilt(y.float()), network(y.float()), rtol=0, atol=0)
