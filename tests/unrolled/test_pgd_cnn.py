"""Unrolled PGD with a CNN prox: classical equivalence at initialisation, batches, gradients, conditioning."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

from unrolled.layers.pgd_cnn import UnrolledPGDCNN, initial_estimate
from unrolled.operators import BlockCS, MaskedFourier, PixelMask, gaussian_block_matrix, random_mask
from unrolled.solvers.proximal_gradient import proximal_gradient

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def prox_identity(x, threshold):
    """The prox of g = 0."""
    return x


def _randomise_output_layers(model: UnrolledPGDCNN, seed: int) -> None:
    """Replace the zero output layers by small random ones, so that the CNN branch is not 0."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for cnn in model.cnns:
            weight = cnn.output_layer.weight
            weight.copy_(0.05 * torch.randn(weight.shape, generator=generator, dtype=weight.dtype))
            cnn.output_layer.bias.fill_(0.01)


def _inpainting(batch: int, size: int = 16, dtype=torch.float64, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    mask = (torch.rand(size, size, generator=generator, dtype=torch.float64) < 0.6).to(dtype)
    operator = PixelMask(mask)
    images = torch.rand(batch, size, size, generator=generator, dtype=torch.float64).to(dtype)
    y = operator.add_noise(operator(images), 0.02, generator)
    return operator, y


def _operators():
    generator = torch.Generator().manual_seed(1)
    pixel_mask = PixelMask((torch.rand(16, 16, generator=generator, dtype=torch.float64) < 0.6).double())
    block_cs = BlockCS(gaussian_block_matrix(0.4, block_size=8, seed=1), (16, 16))
    fourier = MaskedFourier(random_mask((16, 16), 0.4, generator).double())
    return {"pixel_mask": pixel_mask, "block_cs": block_cs, "fourier": fourier}


@pytest.mark.parametrize("momentum", [False, True], ids=["plain", "momentum"])
@pytest.mark.parametrize("name", ["pixel_mask", "block_cs", "fourier"])
def test_untrained_network_is_classical_pgd(name, momentum):
    operator = _operators()[name]
    generator = torch.Generator().manual_seed(2)
    images = torch.rand(3, 16, 16, generator=generator, dtype=torch.float64)
    if operator.complex_domain:
        images = torch.complex(images, torch.rand(3, 16, 16, generator=generator, dtype=torch.float64))
    y = operator.add_noise(operator(images), 0.05, generator)
    is_fourier = isinstance(operator, MaskedFourier)
    torch.manual_seed(0)
    model = UnrolledPGDCNN(
        6, channels=8, depth=3, momentum=momentum, condition_on_mask=not is_fourier, complex_domain=is_fourier
    ).double()

    estimates = model(y, operator, noise_std=0.05, all_stages=True)
    classical = [
        proximal_gradient(
            operator, y, prox_identity, 0.0, step_size=1.0 / operator.lipschitz_constant(), max_iter=k,
            accelerated=momentum, x0=initial_estimate(operator, y),
        ).x
        for k in range(1, 7)
    ]

    assert len(estimates) == 6
    for estimate, expected in zip(estimates, classical):
        torch.testing.assert_close(estimate, expected, rtol=0, atol=1e-6)


def test_batch_of_one_matches_batch_of_17():
    operator, y = _inpainting(17, dtype=torch.float32)
    noise_std = torch.linspace(0.0, 0.1, 17)
    torch.manual_seed(3)
    model = UnrolledPGDCNN(3, channels=8, depth=4, momentum=True)
    _randomise_output_layers(model, seed=3)

    with torch.no_grad():
        batch_output = model(y, operator, noise_std=noise_std)
        single_outputs = [model(y[i : i + 1], operator, noise_std=noise_std[i : i + 1])[0] for i in range(17)]

    assert batch_output.shape == (17, 16, 16)
    assert bool(torch.isfinite(batch_output).all())
    torch.testing.assert_close(torch.stack(single_outputs), batch_output, rtol=0, atol=1e-6)


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_every_parameter_gets_finite_gradient(tied):
    operator, y = _inpainting(4, dtype=torch.float32)
    target = torch.rand(4, 16, 16, generator=torch.Generator().manual_seed(4))
    torch.manual_seed(4)
    model = UnrolledPGDCNN(3, channels=8, depth=3, tied=tied)

    # At initialisation only the output layers get a gradient: the zero output layers block the way
    # back to the hidden ones, and the step sizes act on A x0 - y = 0, since x0 is the pseudo-inverse.
    loss = (model(y, operator, noise_std=0.02) - target).square().mean()
    loss.backward()
    first_gradients = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    _randomise_output_layers(model, seed=4)
    loss = (model(y, operator, noise_std=0.02) - target).square().mean()
    loss.backward()

    assert len(model.cnns) == (1 if tied else 3)
    assert float(first_gradients["log_step_scale"].abs().max()) == 0
    assert float(first_gradients["cnns.0.output_layer.weight"].abs().max()) > 0
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert bool(torch.isfinite(parameter.grad).all()), name
        assert float(parameter.grad.abs().max()) > 0, name


def test_gradcheck_measurements_and_parameters():
    operator, y = _inpainting(2, size=6, seed=5)
    torch.manual_seed(5)
    model = UnrolledPGDCNN(2, channels=3, depth=2, momentum=True).double()
    _randomise_output_layers(model, seed=5)
    y = y.clone().requires_grad_(True)
    noise_std = torch.tensor([0.01, 0.05], dtype=torch.float64, requires_grad=True)
    names = ["log_step_scale", "cnns.1.output_layer.weight", "cnns.0.hidden.0.weight"]
    parameters = {name: p.detach().clone().requires_grad_(True) for name, p in model.named_parameters() if name in names}

    def reconstruct(y, noise_std, *values):
        return functional_call(model, dict(zip(parameters, values)), (y, operator), {"noise_std": noise_std})

    assert torch.autograd.gradcheck(reconstruct, (y, noise_std, *parameters.values()))


def test_complex_network_on_fourier():
    operator = _operators()["fourier"]
    generator = torch.Generator().manual_seed(6)
    images = torch.complex(torch.rand(2, 16, 16, generator=generator), torch.rand(2, 16, 16, generator=generator))
    y = operator(images)
    torch.manual_seed(6)
    model = UnrolledPGDCNN(2, channels=4, depth=3, condition_on_mask=False, complex_domain=True)
    _randomise_output_layers(model, seed=6)

    output = model(y, operator, noise_std=0.0)
    output.abs().square().mean().backward()

    assert output.is_complex()
    assert output.shape == (2, 16, 16)
    assert bool(torch.isfinite(torch.view_as_real(output)).all())
    assert all(bool(torch.isfinite(p.grad).all()) for p in model.parameters())


def test_conditioning_channels_change_output():
    operator, y = _inpainting(2, dtype=torch.float32)
    torch.manual_seed(7)
    model = UnrolledPGDCNN(2, channels=8, depth=3)
    _randomise_output_layers(model, seed=7)
    ones = PixelMask(torch.ones(16, 16))

    with torch.no_grad():
        low_noise = model(y, operator, noise_std=0.01)
        high_noise = model(y, operator, noise_std=0.2)
        conditions = model._conditions(operator, 0.2, torch.Size([2]), y)

    assert conditions.shape == (2, 2, 16, 16)
    torch.testing.assert_close(conditions[:, 0], operator.observed.float().expand(2, 16, 16))
    torch.testing.assert_close(conditions[:, 1], torch.full((2, 16, 16), 0.2))
    assert float((low_noise - high_noise).abs().max()) > 1e-4
    assert model._conditions(ones, 0.0, torch.Size([1]), y)[0, 0].eq(1).all()


def test_per_image_masks_match_single_images():
    generator = torch.Generator().manual_seed(8)
    observed_ratios = torch.tensor([0.2, 0.5, 0.9]).reshape(3, 1, 1)
    masks = (torch.rand(3, 16, 16, generator=generator) < observed_ratios).float()
    images = torch.rand(3, 16, 16, generator=generator)
    noise_std = torch.tensor([0.0, 0.03, 0.1])
    torch.manual_seed(8)
    model = UnrolledPGDCNN(3, channels=8, depth=3)
    _randomise_output_layers(model, seed=8)

    with torch.no_grad():
        batch_output = model(PixelMask(masks)(images), PixelMask(masks), noise_std=noise_std)
        single_outputs = [
            model(PixelMask(masks[i])(images[i]), PixelMask(masks[i]), noise_std=float(noise_std[i])) for i in range(3)
        ]

    torch.testing.assert_close(torch.stack(single_outputs), batch_output, rtol=0, atol=1e-6)


def test_tied_network_shares_one_cnn():
    untied = UnrolledPGDCNN(4, channels=8, depth=3)
    tied = UnrolledPGDCNN(4, channels=8, depth=3, tied=True)
    cnn_parameters = sum(p.numel() for p in tied.cnns.parameters())

    assert sum(p.numel() for p in untied.parameters()) == 4 * cnn_parameters + 4
    assert sum(p.numel() for p in tied.parameters()) == cnn_parameters + 4
    assert tied.n_layers == 4


def test_invalid_configurations_raise():
    operator, y = _inpainting(1, dtype=torch.float32)
    fourier = _operators()["fourier"]
    model = UnrolledPGDCNN(2, channels=4, depth=3)

    with pytest.raises(ValueError, match="noise_std is missing"):
        model(y, operator)
    with pytest.raises(ValueError, match="noise_std must be"):
        model(y, operator, noise_std=-0.1)
    with pytest.raises(ValueError, match="complex_domain"):
        model(fourier(torch.rand(16, 16).double()), fourier, noise_std=0.0)
    with pytest.raises(ValueError, match="condition_on_mask"):
        UnrolledPGDCNN(2, complex_domain=True)(fourier(torch.rand(16, 16).double()), fourier, noise_std=0.0)
    with pytest.raises(ValueError, match="depth must be"):
        UnrolledPGDCNN(2, depth=1)
    with pytest.raises(ValueError, match="n_layers must be"):
        UnrolledPGDCNN(0)
