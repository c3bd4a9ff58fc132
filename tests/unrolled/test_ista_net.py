"""ISTA-Net+: the authors' block-row formulation, gradient steps with a zero residual branch, batches, gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from unrolled.layers.ista_net import SYMMETRY_LOSS_WEIGHT, ISTANetPlus, least_squares_init
from unrolled.operators import BlockCS, PixelMask, gaussian_block_matrix
from unrolled.solvers.proximal_gradient import proximal_gradient

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def prox_identity(x, threshold):
    """The prox of g = 0."""
    return x


def _problem(batch: int, block_size: int = 8, image_shape=(16, 24), cs_ratio: float = 0.3, dtype=torch.float64, seed: int = 0):
    operator = BlockCS(gaussian_block_matrix(cs_ratio, block_size=block_size, seed=seed), image_shape)
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, *image_shape, generator=generator, dtype=torch.float64)
    return operator, operator(images).to(dtype), images.to(dtype)


def _reference_forward(model: ISTANetPlus, y: torch.Tensor, operator: BlockCS, q_init: torch.Tensor):
    """Transcribe the authors' forward pass: blocks as rows, x ← x − ρ x ΦᵀΦ + ρ yΦ, then the per-block convolutions."""
    phi = operator.phi.to(y.dtype)
    b = operator.block_size
    rows = y.reshape(-1, phi.shape[0])
    phi_t_phi = phi.T @ phi
    phi_t_y = rows @ phi
    x = rows @ q_init.to(y.dtype).T
    symmetry_loss = 0.0
    for phase in model.phases:
        x = x - phase.step_size * (x @ phi_t_phi) + phase.step_size * phi_t_y
        x_input = x.view(-1, 1, b, b)
        x_D = F.conv2d(x_input, phase.conv_D.weight, padding=1)
        x_forward = F.conv2d(F.relu(F.conv2d(x_D, phase.conv1_forward.weight, padding=1)), phase.conv2_forward.weight, padding=1)
        soft = torch.sign(x_forward) * F.relu(x_forward.abs() - phase.threshold)
        x_backward = F.conv2d(F.relu(F.conv2d(soft, phase.conv1_backward.weight, padding=1)), phase.conv2_backward.weight, padding=1)
        x = (x_input + F.conv2d(x_backward, phase.conv_G.weight, padding=1)).view(-1, b * b)
        x_D_est = F.conv2d(F.relu(F.conv2d(x_forward, phase.conv1_backward.weight, padding=1)), phase.conv2_backward.weight, padding=1)
        symmetry_loss = symmetry_loss + (x_D_est - x_D).square().mean()
    return operator.from_blocks(x.reshape(*y.shape[:-1], b * b)), symmetry_loss


def test_matches_authors_block_rows():
    operator, y, images = _problem(3)
    torch.manual_seed(1)
    model = ISTANetPlus(n_layers=3, channels=6).double()
    blocks = operator.to_blocks(torch.rand(40, 16, 24, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    q_init = least_squares_init(blocks.reshape(-1, 64), operator.phi)
    model.set_initialization(q_init)

    output = model(y, operator)
    expected, expected_symmetry_loss = _reference_forward(model, y, operator, q_init)

    torch.testing.assert_close(output, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(model.auxiliary_loss(), expected_symmetry_loss, rtol=1e-12, atol=0)


@pytest.mark.parametrize("block_wise", [True, False], ids=["block_wise", "image_level"])
def test_zero_residual_branch_is_gradient_descent(block_wise):
    operator, y, _ = _problem(2, cs_ratio=0.5)
    model = ISTANetPlus(n_layers=5, channels=4, block_wise=block_wise).double()
    with torch.no_grad():
        for phase in model.phases:
            phase.conv_G.weight.zero_()

    estimates = model(y, operator, all_stages=True)
    classical = [
        proximal_gradient(operator, y, prox_identity, 0.0, step_size=0.5, max_iter=k, accelerated=False, x0=operator.adjoint(y)).x
        for k in range(1, 6)
    ]

    assert len(estimates) == 5
    for estimate, expected in zip(estimates, classical):
        torch.testing.assert_close(estimate, expected, rtol=0, atol=1e-12)


def test_one_block_image_level_equals_block_wise():
    operator, y, _ = _problem(2, image_shape=(8, 8))
    torch.manual_seed(2)
    model = ISTANetPlus(n_layers=2, channels=4).double().requires_grad_(False)

    block_wise = model(y, operator)
    model.block_wise = False
    image_level = model(y, operator)
    two_block_operator, two_block_y, _ = _problem(2, image_shape=(8, 16))
    image_level_two_blocks = model(two_block_y, two_block_operator)
    model.block_wise = True
    block_wise_two_blocks = model(two_block_y, two_block_operator)

    torch.testing.assert_close(block_wise, image_level, rtol=0, atol=1e-14)
    # On several blocks the image-level convolutions see across the borders, so the results differ.
    assert float((image_level_two_blocks - block_wise_two_blocks).abs().max()) > 1e-6


def test_batch_of_one_matches_batch_of_17():
    operator, y, _ = _problem(17, dtype=torch.float32)
    torch.manual_seed(3)
    model = ISTANetPlus(n_layers=3, channels=8)

    with torch.no_grad():
        batch_output = model(y, operator)
        single_outputs = [model(y[i : i + 1], operator)[0] for i in range(17)]

    assert batch_output.shape == (17, 16, 24)
    assert bool(torch.isfinite(batch_output).all())
    torch.testing.assert_close(torch.stack(single_outputs), batch_output, rtol=0, atol=1e-6)


def test_default_size_on_33_blocks():
    operator = BlockCS(gaussian_block_matrix(0.25, seed=4), (66, 33))
    images = torch.rand(2, 66, 33, generator=torch.Generator().manual_seed(4))
    torch.manual_seed(4)
    model = ISTANetPlus()

    output = model(operator(images), operator)

    assert model.n_layers == 9
    assert operator.out_shape == (2, 272)
    assert output.shape == (2, 66, 33)
    assert bool(torch.isfinite(output).all())
    assert bool(torch.isfinite(model.auxiliary_loss()))


def test_every_parameter_gets_finite_gradient():
    operator, y, images = _problem(4, dtype=torch.float32)
    torch.manual_seed(5)
    model = ISTANetPlus(n_layers=3, channels=8)

    output = model(y, operator)
    loss = (output - images).square().mean() + SYMMETRY_LOSS_WEIGHT * model.auxiliary_loss()
    loss.backward()

    assert len(list(model.parameters())) == 3 * 8
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert bool(torch.isfinite(parameter.grad).all()), name
        assert float(parameter.grad.abs().max()) > 0, name


def test_gradcheck_measurements_and_parameters():
    operator, y, _ = _problem(2, block_size=4, image_shape=(4, 8), cs_ratio=0.5, seed=6)
    torch.manual_seed(6)
    model = ISTANetPlus(n_layers=2, channels=3).double()
    y = y.clone().requires_grad_(True)
    names = ["phases.0.step_size", "phases.1.threshold", "phases.1.conv_G.weight", "phases.0.conv1_forward.weight"]
    parameters = {name: p.detach().clone().requires_grad_(True) for name, p in model.named_parameters() if name in names}

    def reconstruct(y, *values):
        output = functional_call(model, dict(zip(parameters, values)), (y, operator))
        return output, model.auxiliary_loss()

    assert len(parameters) == len(names)
    assert torch.autograd.gradcheck(reconstruct, (y, *parameters.values()))


def test_least_squares_init_matches_numpy():
    generator = torch.Generator().manual_seed(7)
    phi = gaussian_block_matrix(0.2, block_size=6, seed=7)
    blocks = torch.rand(100, 36, generator=generator, dtype=torch.float64)
    measurements = blocks @ phi.T

    q_init = least_squares_init(blocks, phi)
    solution, *_ = np.linalg.lstsq(measurements.numpy(), blocks.numpy(), rcond=None)
    square_phi = gaussian_block_matrix(1.0, block_size=6, seed=7)

    assert q_init.shape == (36, phi.shape[0])
    np.testing.assert_allclose(q_init.numpy(), solution.T, rtol=1e-9, atol=1e-10)
    # For an orthogonal Φ the map that inverts every block is Φᵀ.
    torch.testing.assert_close(least_squares_init(blocks, square_phi), square_phi.T, rtol=0, atol=1e-10)


def test_state_dict_keeps_q_init():
    operator, y, _ = _problem(2)
    torch.manual_seed(8)
    model = ISTANetPlus(n_layers=2, channels=4).double()
    model.set_initialization(least_squares_init(torch.rand(50, 64, dtype=torch.float64), operator.phi))
    fresh = ISTANetPlus(n_layers=2, channels=4).double()

    fresh.load_state_dict(model.state_dict())

    torch.testing.assert_close(fresh.q_init, model.q_init)
    torch.testing.assert_close(fresh(y, operator), model(y, operator), rtol=0, atol=0)


def test_invalid_use_raises():
    operator, y, _ = _problem(1)
    model = ISTANetPlus(n_layers=2, channels=4).double()

    with pytest.raises(RuntimeError, match="Call the network first"):
        model.auxiliary_loss()
    with pytest.raises(TypeError, match="BlockCS"):
        model(torch.rand(1, 16, 24, dtype=torch.float64), PixelMask(torch.ones(16, 24, dtype=torch.float64)))
    model.set_initialization(torch.zeros(64, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="least_squares_init"):
        model(y, operator)
    with pytest.raises(ValueError, match="at least m"):
        least_squares_init(torch.rand(3, 64, dtype=torch.float64), operator.phi)
    with pytest.raises(ValueError, match="n_layers must be"):
        ISTANetPlus(n_layers=0)
