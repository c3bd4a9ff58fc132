"""ADMM-Net: frozen at the classical values it is TV-ADMM; batches, gradients and its building blocks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import data
from skimage.transform import resize
from torch.func import functional_call

from unrolled.layers.admm_net import (
    ADMMNet,
    apply_plf,
    dct_filters,
    filter_transfer,
    finite_difference_filters,
    periodic_filter,
    periodic_filter_adjoint,
    piecewise_linear,
)
from unrolled.operators import BlockCS, MaskedFourier, PixelMask, cartesian_mask, gaussian_block_matrix
from unrolled.prox import prox_l1
from unrolled.solvers.admm_imaging import admm_tv
from unrolled.tv import finite_difference

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def _camera(size: int) -> torch.Tensor:
    """The scikit-image camera man, downsampled to size x size, on the [0, 1] scale, float64."""
    return torch.from_numpy(resize(data.camera() / 255.0, (size, size), anti_aliasing=True)).double()


def _operators(size: int):
    """Operator and measurements of the camera image for each x-update path of ADMM-Net."""
    image = _camera(size)
    generator = torch.Generator().manual_seed(0)
    fourier = MaskedFourier(cartesian_mask((size, size), 0.4, generator, dtype=torch.float64))
    rows = torch.arange(size, dtype=torch.float64)[:, None]
    complex_image = image * torch.exp(0.5j * torch.sin(6.283185307179586 * rows / size))
    inpainting = PixelMask((torch.rand(size, size, generator=generator) < 0.5).double())
    block_cs = BlockCS(gaussian_block_matrix(0.3, block_size=8, seed=1), (size, size))
    return {
        "mri_exact": (fourier, fourier.forward(complex_image)),
        "inpainting_cg": (inpainting, inpainting.forward(image)),
        "block_cs_cg": (block_cs, block_cs.forward(image)),
    }


@pytest.mark.parametrize("case", ["mri_exact", "inpainting_cg", "block_cs_cg"])
def test_frozen_network_is_tv_admm(case):
    operator, y = _operators(32)[case]
    reg, rho, n_layers, cg_steps = 0.02, 0.5, 6, 8
    # reg / rho = 0.04 lies on the grid of 101 control points in [-1, 1], so the PLF is exactly the soft-threshold.
    network = ADMMNet(
        n_layers, n_filters=2, filter_size=3, n_control_points=101, plf_range=1.0, rho_init=rho,
        threshold_init=reg / rho, dual_step_init=1.0, filter_init="finite_difference", cg_steps=cg_steps, dtype=torch.float64,
    )

    with torch.no_grad():
        stages = network(y, operator, all_stages=True)
    for k in (1, n_layers):
        classical = admm_tv(
            operator, y, reg, rho, isotropic=False, boundary="periodic", max_iter=k, abs_tol=0.0, rel_tol=0.0,
            cg_max_iter=cg_steps, cg_tol=0.0,
        )
        torch.testing.assert_close(stages[k - 1], classical.x, rtol=0, atol=1e-6)
    assert torch.is_complex(stages[-1]) == operator.complex_domain


@pytest.mark.parametrize("case", ["mri_exact", "inpainting_cg"])
def test_batch_one_matches_seventeen(case):
    operator, y = _operators(16)[case]
    generator = torch.Generator().manual_seed(2)
    noise = torch.randn((17, *y.shape), generator=generator, dtype=torch.float64)
    batch = (y + 0.05 * noise * operator.observed).to(torch.complex64 if torch.is_complex(y) else torch.float32)
    network = ADMMNet(3)

    with torch.no_grad():
        together = network(batch, operator)
        for i in (0, 9, 16):
            alone = network(batch[i : i + 1], operator)
            torch.testing.assert_close(together[i : i + 1], alone, rtol=0, atol=1e-6)


@pytest.mark.parametrize("case", ["mri_exact", "block_cs_cg"])
def test_every_parameter_gets_finite_gradient(case):
    operator, y = _operators(16)[case]
    image = _camera(16)
    network = ADMMNet(3, dtype=torch.float64)

    estimate = network(y, operator)
    loss = (estimate.abs() - image).square().mean()
    loss.backward()

    for name, parameter in network.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name


@pytest.mark.parametrize("case", ["mri_exact", "inpainting_cg"])
def test_gradcheck_tiny_network(case):
    operator, y = _operators(8)[case]
    network = ADMMNet(2, n_filters=2, filter_size=3, n_control_points=5, threshold_init=0.1, cg_steps=3, dtype=torch.float64)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        # Move the control values off the soft-threshold, so that every one of them matters.
        network.plf_values.add_(0.05 * torch.randn(network.plf_values.shape, generator=generator, dtype=torch.float64))
    names = [name for name, _ in network.named_parameters()]
    parameters = tuple(p.detach().clone().requires_grad_(True) for p in network.parameters())

    def reconstruct(y, *values):
        return functional_call(network, dict(zip(names, values)), (y, operator))

    assert torch.autograd.gradcheck(reconstruct, (y.clone().requires_grad_(True), *parameters), atol=1e-6)


def test_all_stages_and_noise_std():
    operator, y = _operators(16)["inpainting_cg"]
    network = ADMMNet(4, dtype=torch.float64)
    with torch.no_grad():
        stages = network(y, operator, all_stages=True)
        last = network(y, operator, noise_std=0.1)
    assert network.n_layers == 4
    assert len(stages) == 4
    assert all(stage.shape == (16, 16) for stage in stages)
    torch.testing.assert_close(stages[-1], last, rtol=0, atol=0)


def test_untrained_beats_zero_filling():
    operator, y = _operators(32)["mri_exact"]
    image = _camera(32)
    network = ADMMNet(10, dtype=torch.float64)
    with torch.no_grad():
        estimate = network(y, operator)
    error = (estimate.abs() - image).norm()
    zero_filled_error = (operator.zero_filled(y).abs() - image).norm()
    assert error < zero_filled_error


def test_piecewise_linear_starts_as_soft_threshold():
    network = ADMMNet(1, n_filters=3, n_control_points=101, plf_range=1.0, threshold_init=0.06, dtype=torch.float64)
    x = torch.linspace(-1.5, 1.5, 3000, dtype=torch.float64).reshape(1, 3, 1, 1000)
    values = network.plf_values[0].detach()

    torch.testing.assert_close(piecewise_linear(x, values, -1.0, 1.0), prox_l1(x, 0.06), rtol=0, atol=1e-14)

    generator = torch.Generator().manual_seed(4)
    w = torch.complex(torch.randn(2, 3, 5, 5, generator=generator), torch.randn(2, 3, 5, 5, generator=generator)).to(torch.complex128)
    w[0, 0, 0, 0] = 0
    torch.testing.assert_close(apply_plf(w, values, -1.0, 1.0), prox_l1(w, 0.06), rtol=0, atol=1e-14)


def test_piecewise_linear_interpolates():
    generator = torch.Generator().manual_seed(5)
    values = torch.randn(2, 7, generator=generator, dtype=torch.float64)
    x = 3 * torch.rand(1, 2, 1, 400, generator=generator, dtype=torch.float64) - 1.5
    points = np.linspace(-1.0, 1.0, 7)

    result = piecewise_linear(x, values, -1.0, 1.0)

    for l in range(2):
        inputs = x[0, l, 0].numpy()
        expected = np.interp(inputs, points, values[l].numpy())
        expected = np.where(inputs < -1, inputs + 1 + values[l, 0].item(), expected)
        expected = np.where(inputs > 1, inputs - 1 + values[l, -1].item(), expected)
        np.testing.assert_allclose(result[0, l, 0].numpy(), expected, rtol=0, atol=1e-13)


def test_finite_difference_filters_match_tv_gradient():
    generator = torch.Generator().manual_seed(6)
    image = torch.randn(3, 10, 12, generator=generator, dtype=torch.float64)
    transfer = filter_transfer(finite_difference_filters(3), (10, 12))
    torch.testing.assert_close(periodic_filter(image, transfer), finite_difference(image, "periodic"), rtol=0, atol=1e-13)


def test_periodic_filter_matches_conv2d():
    generator = torch.Generator().manual_seed(7)
    filters = torch.randn(4, 5, 5, generator=generator, dtype=torch.float64)
    image = torch.randn(2, 9, 11, generator=generator, dtype=torch.float64)
    transfer = filter_transfer(filters, (9, 11))

    padded = F.pad(image.unsqueeze(1), (2, 2, 2, 2), mode="circular")
    expected = F.conv2d(padded, filters.unsqueeze(1))
    torch.testing.assert_close(periodic_filter(image, transfer), expected, rtol=0, atol=1e-12)

    responses = torch.randn(2, 4, 9, 11, generator=generator, dtype=torch.float64)
    left = (periodic_filter(image, transfer) * responses).sum()
    right = (image * periodic_filter_adjoint(responses, transfer)).sum()
    assert abs(float(left - right)) <= 1e-11 * abs(float(left))


def test_dct_filters_are_orthonormal_without_dc():
    filters = dct_filters(3, 8)
    flat = filters.reshape(8, 9)
    torch.testing.assert_close(flat @ flat.T, torch.eye(8, dtype=torch.float64), rtol=0, atol=1e-14)
    torch.testing.assert_close(flat.sum(-1), torch.zeros(8, dtype=torch.float64), rtol=0, atol=1e-14)
    # The two first-order filters come first: a smaller bank keeps the lowest frequencies.
    assert torch.equal(dct_filters(3, 2), filters[:2])


def test_bad_arguments_raise_value_error():
    with pytest.raises(ValueError, match="n_layers.*0"):
        ADMMNet(0)
    with pytest.raises(ValueError, match=r"n_filters.*\[1, filter_size² - 1 = 8\].*9"):
        ADMMNet(2, n_filters=9)
    with pytest.raises(ValueError, match="filter_init.*'gabor'"):
        ADMMNet(2, filter_init="gabor")
    with pytest.raises(ValueError, match="n_filters must be 2, got 8"):
        ADMMNet(2, filter_init="finite_difference")
    with pytest.raises(ValueError, match="rho_init.*-1"):
        ADMMNet(2, rho_init=-1.0)
    operator = PixelMask(torch.ones(8, 8))
    with pytest.raises(ValueError, match=r"\(\.\.\., 8, 8\).*\(8, 9\)"):
        ADMMNet(2)(torch.zeros(8, 9), operator)
