"""Soft-thresholding: values, subgradient optimality, gradients at and away from the kinks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from unrolled.prox import prox_l1, prox_l1_, prox_l1_bypass_count, prox_l1_support_selection
from unrolled.solvers.ista import ista_step

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def _ista_step_threshold(x, threshold):
    """Soft-threshold ``x`` through ``ista_step`` with a zero residual, so the gradient step is the identity."""
    n = x.shape[-1]
    residual = torch.zeros_like(x)
    W = torch.eye(n, dtype=x.dtype)
    return ista_step(x, residual, W, 1.0, threshold)


def _support_selection_no_bypass(x, threshold):
    return prox_l1_support_selection(x, threshold, 0.0)


# Every implementation of the plain soft-threshold, applied entrywise to a 1-D tensor.
THRESHOLD_FUNCTIONS = {
    "prox_l1": prox_l1,
    "support_selection_fraction_0": _support_selection_no_bypass,
    "ista_step": _ista_step_threshold,
}


def _kink_input(value: float) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.tensor([value], dtype=torch.float64, requires_grad=True)
    threshold = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    return x, threshold


@pytest.mark.parametrize("name", sorted(THRESHOLD_FUNCTIONS))
@pytest.mark.parametrize("value", [0.5, -0.5, 0.0])
def test_kink_value_and_gradient_zero(name, value):
    x, threshold = _kink_input(value)

    out = THRESHOLD_FUNCTIONS[name](x, threshold)
    out.sum().backward()

    assert out.item() == 0.0
    assert x.grad.item() == 0.0
    assert threshold.grad.item() == 0.0


@pytest.mark.parametrize("value", [0.5, -0.5, 0.0])
def test_kink_support_selection_not_bypassed(value):
    # n = 4 and fraction 0.25 bypass exactly one entry, the -4.0, so entry 0 is soft-thresholded.
    x = torch.tensor([value, 3.0, -4.0, 2.0], dtype=torch.float64, requires_grad=True)
    threshold = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)

    out = prox_l1_support_selection(x, threshold, 0.25)
    out[0].backward()

    assert out[2].item() == -4.0
    assert out[1].item() == 2.5
    assert out[0].item() == 0.0
    assert x.grad[0].item() == 0.0
    assert threshold.grad.item() == 0.0


def test_kink_ista_step_residual_gradient_zero():
    # The kink reached through the gradient step: x - (r @ W) = 0.8 - 0.3 = 0.5 = threshold.
    x = torch.tensor([0.8], dtype=torch.float64, requires_grad=True)
    residual = torch.tensor([0.3], dtype=torch.float64, requires_grad=True)
    W = torch.ones(1, 1, dtype=torch.float64, requires_grad=True)
    threshold = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)

    out = ista_step(x, residual, W, 1.0, threshold)
    out.sum().backward()

    assert out.item() == 0.0
    assert x.grad.item() == 0.0
    assert residual.grad.item() == 0.0
    assert W.grad.item() == 0.0
    assert threshold.grad.item() == 0.0


@pytest.mark.parametrize("name", sorted(THRESHOLD_FUNCTIONS))
def test_gradient_away_from_kinks(name):
    x = torch.tensor([-2.0, -0.7, -0.3, 0.2, 0.6, 1.5], dtype=torch.float64, requires_grad=True)
    # One threshold per entry, so that each entry's threshold gradient is reported separately.
    threshold = torch.full_like(x, 0.5).requires_grad_(True)

    out = THRESHOLD_FUNCTIONS[name](x, threshold)
    out.sum().backward()

    active = (x.abs() > 0.5).to(torch.float64)
    expected_value = torch.sign(x) * (x.abs() - 0.5) * active
    torch.testing.assert_close(out, expected_value, rtol=0, atol=1e-15)
    torch.testing.assert_close(x.grad, active, rtol=0, atol=0)
    torch.testing.assert_close(threshold.grad, -torch.sign(x.detach()) * active, rtol=0, atol=0)


def test_bypassed_entries_gradient():
    x = torch.tensor([0.1, -3.0, 0.4, 2.0, -0.2], dtype=torch.float64, requires_grad=True)
    threshold = torch.full_like(x, 0.5).requires_grad_(True)

    # floor(0.4 * 5) = 2 bypassed entries, -3.0 and 2.0.
    out = prox_l1_support_selection(x, threshold, 0.4)
    out.sum().backward()

    torch.testing.assert_close(out, torch.tensor([0.0, -3.0, 0.0, 2.0, 0.0], dtype=torch.float64), rtol=0, atol=0)
    torch.testing.assert_close(x.grad, torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0], dtype=torch.float64), rtol=0, atol=0)
    torch.testing.assert_close(threshold.grad, torch.zeros(5, dtype=torch.float64), rtol=0, atol=0)


def test_prox_l1_matches_numpy():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(7, 13, generator=generator, dtype=torch.float64)
    threshold = 0.3

    expected = np.sign(x.numpy()) * np.maximum(np.abs(x.numpy()) - threshold, 0.0)

    np.testing.assert_allclose(prox_l1(x, threshold).numpy(), expected, rtol=0, atol=1e-15)


def test_prox_l1_optimality_real():
    # p = prox(v) minimises 0.5 * ||p - v||^2 + theta * ||p||_1 iff v - p lies in theta * d||p||_1.
    # That is v_i - p_i = theta * sign(p_i) where p_i != 0, and |v_i| <= theta where p_i = 0.
    generator = torch.Generator().manual_seed(1)
    v = 2 * torch.randn(200, generator=generator, dtype=torch.float64)
    theta = 0.8

    p = prox_l1(v, theta)
    nonzero = p != 0

    assert 0 < int(nonzero.sum()) < 200
    torch.testing.assert_close((v - p)[nonzero], theta * torch.sign(p[nonzero]), rtol=0, atol=1e-14)
    assert bool((v[~nonzero].abs() <= theta).all())


def test_prox_l1_objective_not_improved():
    # The objective carries the 1/2: any perturbation of p must not lower 0.5 * ||p - v||^2 + theta * ||p||_1.
    generator = torch.Generator().manual_seed(2)
    v = torch.randn(50, generator=generator, dtype=torch.float64)
    theta = 0.4
    p = prox_l1(v, theta)

    def objective(z):
        return 0.5 * (z - v).square().sum(-1) + theta * z.abs().sum(-1)

    perturbed = p + 1e-3 * torch.randn(1000, 50, generator=generator, dtype=torch.float64)

    assert bool((objective(perturbed) >= objective(p)).all())


def test_prox_l1_per_sample_threshold():
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(4, 9, generator=generator, dtype=torch.float64)
    threshold = torch.tensor([[0.1], [0.5], [1.0], [2.0]], dtype=torch.float64)

    out = prox_l1(x, threshold)

    for i in range(4):
        torch.testing.assert_close(out[i], prox_l1(x[i], float(threshold[i])), rtol=0, atol=0)


def test_complex_closed_form():
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(300, generator=generator, dtype=torch.complex128)
    theta = 0.6

    modulus = x.abs()
    expected = torch.where(modulus > theta, x * (1 - theta / modulus), torch.zeros_like(x))

    torch.testing.assert_close(prox_l1(x, theta), expected, rtol=0, atol=1e-15)


def test_complex_optimality():
    # Where p != 0, p - v + theta * p / |p| = 0. Where p = 0, |v| <= theta.
    generator = torch.Generator().manual_seed(5)
    v = torch.randn(300, generator=generator, dtype=torch.complex128)
    theta = 0.6

    p = prox_l1(v, theta)
    nonzero = p != 0
    residual = p[nonzero] - v[nonzero] + theta * p[nonzero] / p[nonzero].abs()

    assert 0 < int(nonzero.sum()) < 300
    assert float(residual.abs().max()) < 1e-14
    assert bool((v[~nonzero].abs() <= theta).all())


def test_complex_real_axis_matches_real():
    x = torch.tensor([-2.0, -0.3, 0.0, 0.4, 1.7], dtype=torch.float64)

    out = prox_l1(x.to(torch.complex128), 0.5)

    torch.testing.assert_close(out.real, prox_l1(x, 0.5), rtol=0, atol=1e-15)
    assert float(out.imag.abs().max()) == 0.0


def test_complex_zero_gradient_finite():
    x = torch.zeros(3, dtype=torch.complex128, requires_grad=True)
    threshold = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)

    out = prox_l1(x, threshold)
    (out.real.sum() + out.imag.sum()).backward()

    assert float(out.detach().abs().max()) == 0.0
    assert bool(torch.isfinite(torch.view_as_real(x.grad)).all())
    assert float(x.grad.abs().max()) == 0.0
    assert threshold.grad.item() == 0.0


def _away_from_kinks(x: torch.Tensor, threshold: float, margin: float = 1e-3) -> bool:
    modulus = x.abs()
    return bool(((modulus - threshold).abs() > margin).all() and (modulus > margin).all())


def test_gradcheck_real():
    generator = torch.Generator().manual_seed(6)
    x = torch.randn(5, 8, generator=generator, dtype=torch.float64)
    threshold = torch.tensor(0.4, dtype=torch.float64)
    assert _away_from_kinks(x, 0.4)

    inputs = (x.requires_grad_(True), threshold.requires_grad_(True))

    assert torch.autograd.gradcheck(prox_l1, inputs)


def test_gradcheck_complex():
    generator = torch.Generator().manual_seed(7)
    x = torch.randn(12, generator=generator, dtype=torch.complex128)
    threshold = torch.tensor(0.4, dtype=torch.float64)
    assert _away_from_kinks(x, 0.4)

    inputs = (x.requires_grad_(True), threshold.requires_grad_(True))

    assert torch.autograd.gradcheck(prox_l1, inputs)


def test_gradcheck_support_selection():
    generator = torch.Generator().manual_seed(9)
    x = torch.randn(3, 20, generator=generator, dtype=torch.float64)
    threshold = torch.tensor(0.4, dtype=torch.float64)
    assert _away_from_kinks(x, 0.4)

    def select(x, threshold):
        return prox_l1_support_selection(x, threshold, 0.1)

    inputs = (x.requires_grad_(True), threshold.requires_grad_(True))

    assert torch.autograd.gradcheck(select, inputs)


def test_gradcheck_ista_step():
    generator = torch.Generator().manual_seed(10)
    x = torch.randn(2, 6, generator=generator, dtype=torch.float64)
    residual = torch.randn(2, 4, generator=generator, dtype=torch.float64)
    W = torch.randn(4, 6, generator=generator, dtype=torch.float64)
    step_size = torch.tensor(0.3, dtype=torch.float64)
    threshold = torch.tensor(0.2, dtype=torch.float64)
    assert _away_from_kinks(x - step_size * (residual @ W), 0.2)

    inputs = tuple(t.requires_grad_(True) for t in (x, residual, W, step_size, threshold))

    assert torch.autograd.gradcheck(ista_step, inputs)


@pytest.mark.parametrize("fraction", [-0.1, 1.5])
def test_bypass_fraction_out_of_range(fraction):
    x = torch.ones(4)

    with pytest.raises(ValueError, match=r"bypass_fraction must lie in \[0, 1\], got"):
        prox_l1_support_selection(x, 0.1, fraction)


def test_bypass_fraction_one_is_identity():
    x = torch.tensor([0.1, -0.2, 3.0], dtype=torch.float64)

    torch.testing.assert_close(prox_l1_support_selection(x, 10.0, 1.0), x, rtol=0, atol=0)


@pytest.mark.parametrize("value", [0.5, -0.5, 0.0])
def test_in_place_kink_value_zero(value):
    x = torch.tensor([value], dtype=torch.float64)

    assert prox_l1_(x, 0.5).item() == 0.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.complex128])
def test_in_place_equals_prox_l1(dtype):
    generator = torch.Generator().manual_seed(11)
    x = torch.randn(6, 40, generator=generator, dtype=dtype)
    threshold = torch.linspace(0.1, 1.5, 6, dtype=torch.float64).unsqueeze(-1).to(x.real.dtype)

    expected = prox_l1(x, threshold)
    out = prox_l1_(x, threshold)

    assert out.data_ptr() == x.data_ptr()
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_in_place_rejects_autograd():
    x = torch.ones(3, requires_grad=True)

    with pytest.raises(RuntimeError, match="prox_l1_ works in place outside autograd"):
        prox_l1_(x, 0.5)


def test_in_place_rejects_threshold_with_grad():
    threshold = torch.tensor(0.5, requires_grad=True)

    with pytest.raises(RuntimeError, match="but x or threshold requires grad"):
        prox_l1_(torch.ones(3), threshold)


@pytest.mark.parametrize("bypass_fraction", [0.0, 0.1])
def test_ista_step_out_equals_plain(bypass_fraction):
    generator = torch.Generator().manual_seed(12)
    x = torch.randn(5, 30, generator=generator, dtype=torch.float64)
    residual = torch.randn(5, 20, generator=generator, dtype=torch.float64)
    W = torch.randn(20, 30, generator=generator, dtype=torch.float64)
    out = torch.empty(5, 30, dtype=torch.float64)

    expected = ista_step(x, residual, W, 0.1, 0.3, bypass_fraction)
    result = ista_step(x, residual, W, 0.1, 0.3, bypass_fraction, out=out)

    assert result.data_ptr() == out.data_ptr()
    torch.testing.assert_close(result, expected, rtol=0, atol=0)


def test_ista_step_out_aliasing_x():
    x = torch.ones(2, 3, dtype=torch.float64)

    with pytest.raises(ValueError, match="out must not share memory with x or residual"):
        ista_step(x, torch.ones(2, 4, dtype=torch.float64), torch.ones(4, 3, dtype=torch.float64), 0.1, 0.1, out=x)


@pytest.mark.parametrize("fraction", [0.0, 0.012, 0.06, 0.13, 1.0])
def test_bypass_count_equals_fraction(fraction):
    x = torch.randn(6, 500, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    count = math.floor(round(fraction * 500, 9))

    out = prox_l1_bypass_count(x, 0.3, torch.full((6, 1), count))

    torch.testing.assert_close(out, prox_l1_support_selection(x, 0.3, fraction), rtol=0, atol=0)


def test_bypass_count_per_sample():
    x = torch.randn(3, 40, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    counts = torch.tensor([[0], [7], [40]])

    out = prox_l1_bypass_count(x, 100.0, counts)

    # A threshold above every |x_i| leaves exactly the bypassed entries nonzero, unchanged.
    assert (out != 0).sum(-1).tolist() == [0, 7, 40]
    largest = torch.topk(x[1].abs(), 7).indices
    torch.testing.assert_close(out[1, largest], x[1, largest], rtol=0, atol=0)
    torch.testing.assert_close(out[2], x[2], rtol=0, atol=0)


def test_bypass_count_shape_rejected():
    x = torch.ones(3, 40)

    with pytest.raises(ValueError, match=r"n_bypass must have shape \(3, 1\) \(one count per sample\), got \(3,\)"):
        prox_l1_bypass_count(x, 0.1, torch.zeros(3, dtype=torch.long))
