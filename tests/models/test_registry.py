"""Every registered network: build, forward on batch sizes 1 and 17, batch consistency, gradients, weights round trip."""

from __future__ import annotations

import inspect

import pytest
import torch

from models import NETWORKS, build_network
from models.registry import register_network
from unrolled.problems import SparseCoding

pytestmark = pytest.mark.usefixtures("zoo_checkpoints")

N_LAYERS = 3


def _variants() -> list[tuple[str, dict]]:
    """Every registered name with its defaults, plus each boolean option it accepts switched on and off."""
    cases = []
    for name in sorted(NETWORKS):
        cases.append((name, {}))
        parameters = inspect.signature(NETWORKS[name]).parameters
        for option in ("tied", "support_selection"):
            if option in parameters:
                default = parameters[option].default
                cases.append((name, {option: not default}))
    return cases


VARIANTS = _variants()
VARIANT_IDS = [f"{name}-{'-'.join(f'{k}={v}' for k, v in kwargs.items()) or 'default'}" for name, kwargs in VARIANTS]


def _batch(problem: SparseCoding, batch_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    y, x = problem.sample(batch_size, generator)
    return y.to(torch.float32), x.to(torch.float32)


def test_registry_has_lista_family():
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


@pytest.mark.parametrize(("name", "kwargs"), VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("batch_size", [1, 17])
def test_forward_shape_finite(small_problem, name, kwargs, batch_size):
    network = build_network(name, small_problem.A.to(torch.float32), N_LAYERS, **kwargs)
    y, _ = _batch(small_problem, batch_size, seed=0)

    x_hats = network(y)

    assert x_hats.shape == (N_LAYERS, batch_size, small_problem.n)
    assert x_hats.dtype == torch.float32
    assert torch.isfinite(x_hats).all()
    assert x_hats[-1].abs().sum() > 0


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_forward_single_vector(small_problem, name):
    network = build_network(name, small_problem.A.to(torch.float32), N_LAYERS)
    y, _ = _batch(small_problem, 4, seed=1)

    single = network(y[2])

    assert single.shape == (N_LAYERS, small_problem.n)
    torch.testing.assert_close(single, network(y)[:, 2], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_forward_fewer_layers(small_problem, name):
    network = build_network(name, small_problem.A.to(torch.float32), N_LAYERS)
    y, _ = _batch(small_problem, 4, seed=2)

    first_two = network(y, n_layers=2)

    assert first_two.shape == (2, 4, small_problem.n)
    assert torch.equal(first_two, network(y)[:2])


@pytest.mark.parametrize(("name", "kwargs"), VARIANTS, ids=VARIANT_IDS)
def test_gradients_finite_nonzero(small_problem, name, kwargs):
    torch.manual_seed(0)
    network = build_network(name, small_problem.A.to(torch.float32), N_LAYERS, **kwargs)
    y, x = _batch(small_problem, 16, seed=3)

    (network(y) - x).square().mean().backward()

    parameters = dict(network.named_parameters())
    assert parameters
    for parameter_name, parameter in parameters.items():
        assert parameter.grad is not None, parameter_name
        assert torch.isfinite(parameter.grad).all(), parameter_name
        assert parameter.grad.abs().sum() > 0, parameter_name
        if parameter.ndim > 0:
            per_entry = parameter.grad.reshape(parameter.shape[0], -1).abs().sum(1)
            assert (per_entry > 0).all(), parameter_name


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_buffers_not_learnable(small_problem, name):
    network = build_network(name, small_problem.A.to(torch.float32), N_LAYERS)

    parameter_names = {parameter_name for parameter_name, _ in network.named_parameters()}

    assert "A" not in parameter_names
    assert torch.equal(network.A, small_problem.A.to(torch.float32))


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_batch_equals_samples_one_by_one(small_problem, name):
    network = build_network(name, small_problem.A.to(torch.float32), N_LAYERS)
    y, _ = _batch(small_problem, 17, seed=4)

    with torch.no_grad():
        batched = network(y)
        single = torch.stack([network(y[i : i + 1])[:, 0] for i in range(y.shape[0])], dim=1)

    torch.testing.assert_close(batched, single, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_per_layer_parameters_index_layers(small_problem, name):
    network = build_network(name, small_problem.A.to(torch.float32), N_LAYERS)
    parameters = dict(network.named_parameters())

    for parameter_name, offset in network.per_layer_parameters().items():
        assert parameter_name in parameters, f"{name} lists unknown parameter {parameter_name}"
        assert parameters[parameter_name].shape[0] + offset == N_LAYERS, f"{name}.{parameter_name}"


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_state_dict_round_trip(small_problem, name):
    # A card rebuilds the network from A and its constructor arguments, then loads the weights strictly.
    network = build_network(name, small_problem.A.to(torch.float32), N_LAYERS)
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.mul_(1.01)
    rebuilt = build_network(name, network.A, N_LAYERS)
    rebuilt.load_state_dict(network.state_dict(), strict=True)
    y, _ = _batch(small_problem, 8, seed=5)

    with torch.no_grad():
        torch.testing.assert_close(rebuilt(y), network(y), rtol=0, atol=0)


def test_build_unknown_name(small_problem):
    with pytest.raises(ValueError, match="unknown network 'lista_pc'") as error:
        build_network("lista_pc", small_problem.A, N_LAYERS)

    message = str(error.value)
    assert "Close matches: " in message
    assert "lista_cp" in message.split("Close matches: ")[1].split(".")[0]


def test_build_unknown_name_no_match(small_problem):
    with pytest.raises(ValueError, match="unknown network 'subprocess.run'") as error:
        build_network("subprocess.run", small_problem.A, N_LAYERS)

    assert "Close matches" not in str(error.value)
    assert f"Available: {', '.join(sorted(NETWORKS))}." in str(error.value)


def test_register_duplicate_name():
    with pytest.raises(ValueError, match="network 'lista' is already registered to LISTA"):
        register_network("lista", NETWORKS["alista"])
