"""Proximal operators beyond soft-thresholding: optimality conditions, brute-force minimisation, Moreau identities, gradients, argument checks."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from torch.autograd import gradcheck

from unrolled.prox import (
    prox_box,
    prox_elastic_net,
    prox_group_l1,
    prox_l1,
    prox_l1_nonneg,
    prox_l2_ball,
    prox_nonneg,
)

pytestmark = pytest.mark.usefixtures("single_torch_thread")

DTYPES = [torch.float64, torch.complex128]


def _random(shape: tuple[int, ...], dtype: torch.dtype = torch.float64, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator, dtype=dtype)


def _minimize_bounded(v: np.ndarray, penalty, bounds) -> np.ndarray:
    """Minimise ½‖x − v‖² + penalty(x) with L-BFGS-B. ``penalty(x)`` returns its value and gradient and must be smooth within the bounds."""

    def objective(x):
        value, gradient = penalty(x)
        return 0.5 * np.sum((x - v) ** 2) + value, x - v + gradient

    result = minimize(objective, np.zeros_like(v), jac=True, method="L-BFGS-B", bounds=bounds, options={"ftol": 1e-16, "gtol": 1e-12, "maxiter": 10_000})
    return result.x


def _no_penalty(x):
    return 0.0, np.zeros_like(x)


# ---------------------------------------------------------------- prox_l1 on complex input


def test_l1_complex_shrinks_modulus_keeps_phase():
    z = torch.tensor([-0.5 + 1j, 0.5 + 1j, 0.0], dtype=torch.complex128, requires_grad=True)
    weights = torch.tensor([0.3 - 0.2j, -1.0 + 0.5j, 0.7 + 0.1j], dtype=torch.complex128)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = prox_l1(z, 0.4)
        # A smooth real loss, so the gradient reflects prox_l1 alone.
        (out * weights.conj()).real.sum().backward()

    modulus = math.sqrt(0.5**2 + 1.0)
    expected = torch.tensor([(-0.5 + 1j) * (modulus - 0.4) / modulus, (0.5 + 1j) * (modulus - 0.4) / modulus, 0.0], dtype=torch.complex128)
    assert torch.allclose(out.detach(), expected, rtol=0, atol=1e-15)
    assert out[2].item() == 0
    assert torch.allclose(out[:2].detach().angle(), z[:2].detach().angle(), rtol=0, atol=1e-15)
    assert torch.isfinite(torch.view_as_real(z.grad)).all()
    assert z.grad[2].item() == 0


# ---------------------------------------------------------------- prox_group_l1


def _group_input(dtype: torch.dtype) -> torch.Tensor:
    """Twelve groups of size 3: four scaled below the threshold 0.5, one exactly zero."""
    x = _random((4, 3, 3), dtype, seed=1)
    x[0] *= 0.1
    x[1, 2] = 0
    return x


@pytest.mark.parametrize("dtype", DTYPES)
def test_group_l1_optimality_condition(dtype):
    v = _group_input(dtype)
    threshold = 0.5

    x = prox_group_l1(v, threshold)

    norm_x = torch.linalg.vector_norm(x, dim=-1)
    norm_v = torch.linalg.vector_norm(v, dim=-1)
    nonzero = norm_x > 0
    assert nonzero.any()
    assert (~nonzero).any()
    # Nonzero group: v_g - x_g = θ x_g / ‖x_g‖. Zero group: ‖v_g‖ ≤ θ.
    residual = v - x - threshold * x / torch.where(nonzero, norm_x, 1.0)[..., None]
    assert residual[nonzero].abs().max() < 1e-12
    assert (norm_v[~nonzero] <= threshold).all()
    assert (x[~nonzero] == 0).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_group_l1_moreau_with_l2_ball(dtype):
    v = _random((5, 4), dtype, seed=2)
    threshold = 1.2

    total = prox_group_l1(v, threshold) + prox_l2_ball(v, None, radius=threshold)

    assert torch.allclose(total, v, rtol=0, atol=1e-14)


def test_group_l1_group_dim_and_per_group_threshold():
    v = _random((3, 6), seed=3)
    threshold = torch.tensor([[0.1], [1.0], [5.0]], dtype=torch.float64)

    by_rows = prox_group_l1(v, threshold, group_dim=-1)
    by_columns = prox_group_l1(v.T, threshold.T, group_dim=0)

    assert torch.equal(by_rows, by_columns.T)
    assert (by_rows[2] == 0).all()
    for row in range(3):
        assert torch.allclose(by_rows[row], prox_group_l1(v[row], threshold[row, 0].item()), rtol=0, atol=1e-15)


@pytest.mark.parametrize("dtype", DTYPES)
def test_group_l1_zero_group_gradient_finite(dtype):
    x = torch.zeros(2, 3, dtype=dtype)
    x[1] = torch.tensor([1.0, -2.0, 0.5], dtype=dtype)
    x.requires_grad_(True)
    threshold = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = prox_group_l1(x, threshold)
        (out.abs().square().sum() + out.real.sum()).backward()

    assert (out[0] == 0).all()
    assert torch.isfinite(torch.view_as_real(x.grad) if dtype.is_complex else x.grad).all()
    assert (x.grad[0] == 0).all()
    assert torch.isfinite(threshold.grad)


@pytest.mark.parametrize("dtype", DTYPES)
def test_group_l1_gradcheck(dtype):
    x = _group_input(dtype).requires_grad_(True)
    threshold = torch.full((4, 3, 1), 0.5, dtype=torch.float64, requires_grad=True)

    assert gradcheck(prox_group_l1, (x, threshold))


def test_group_l1_bad_arguments():
    x = _random((3, 4))
    with pytest.raises(ValueError, match="-0.5"):
        prox_group_l1(x, -0.5)
    with pytest.raises(ValueError, match=r"\(3, 4\)"):
        prox_group_l1(x, torch.ones(3, 4))


# ---------------------------------------------------------------- prox_l2_ball


def _project_ball_slsqp(v: np.ndarray, radius: float) -> np.ndarray:
    constraint = {"type": "ineq", "fun": lambda x: radius**2 - x @ x, "jac": lambda x: -2 * x}
    result = minimize(
        lambda x: (0.5 * np.sum((x - v) ** 2), x - v),
        np.zeros_like(v),
        jac=True,
        method="SLSQP",
        constraints=[constraint],
        options={"ftol": 1e-16, "maxiter": 1_000},
    )
    return result.x


def test_l2_ball_matches_constrained_minimisation():
    v = _random((4, 5), seed=4) * torch.tensor([[0.1], [1.0], [2.0], [3.0]], dtype=torch.float64)
    radius = 1.5

    x = prox_l2_ball(v, None, radius)

    for row in range(4):
        reference = _project_ball_slsqp(v[row].numpy(), radius)
        assert np.abs(x[row].numpy() - reference).max() < 1e-6
    assert torch.equal(x[0], v[0])


@pytest.mark.parametrize("dtype", DTYPES)
def test_l2_ball_variational_inequality(dtype):
    # x = Π_C(v) iff Re⟨v − x, z − x⟩ ≤ 0 for every z in C. The samples z lie inside the ball and on its sphere.
    v = 3 * _random((6, 4), dtype, seed=5)
    radius = torch.tensor([[0.5], [1.0], [2.0], [4.0], [8.0], [0.0]], dtype=torch.float64)
    x = prox_l2_ball(v, None, radius)
    directions = _random((200, 6, 4), dtype, seed=6)
    directions = directions / torch.linalg.vector_norm(directions, dim=-1, keepdim=True)
    scales = torch.rand(200, 6, 1, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    scales[:100] = 1.0
    z = radius * scales * directions

    inner = ((v - x).conj() * (z - x)).real.sum(dim=-1)

    assert (torch.linalg.vector_norm(x, dim=-1) <= radius[:, 0] + 1e-12).all()
    assert inner.max() < 1e-12
    assert (x[5] == 0).all()


def test_l2_ball_complex_equals_real_view():
    v = 2 * _random((3, 4), torch.complex128, seed=8)

    x = prox_l2_ball(v, None, 1.0)
    x_real_view = prox_l2_ball(torch.view_as_real(v).reshape(3, 8), None, 1.0)

    assert torch.allclose(torch.view_as_real(x).reshape(3, 8), x_real_view, rtol=0, atol=1e-15)


@pytest.mark.parametrize("dtype", DTYPES)
def test_l2_ball_gradcheck(dtype):
    # Rows 0 and 1 lie outside the ball, row 2 inside.
    v = (_random((3, 4), dtype, seed=9) * torch.tensor([[3.0], [2.0], [0.1]], dtype=torch.float64)).requires_grad_(True)
    radius = torch.tensor([[1.0], [0.7], [1.0]], dtype=torch.float64, requires_grad=True)

    assert gradcheck(lambda x, r: prox_l2_ball(x, None, r), (v, radius))


def test_l2_ball_bad_arguments():
    x = _random((3, 4))
    with pytest.raises(ValueError, match="-1.0"):
        prox_l2_ball(x, None, -1.0)
    with pytest.raises(ValueError, match=r"\(4,\)"):
        prox_l2_ball(x, None, torch.ones(4))


# ---------------------------------------------------------------- prox_nonneg and prox_box


def test_nonneg_matches_bounded_minimisation():
    v = _random((7,), seed=10)

    x = prox_nonneg(v)

    reference = _minimize_bounded(v.numpy(), _no_penalty, [(0, None)] * 7)
    assert np.abs(x.numpy() - reference).max() < 1e-6
    assert torch.equal(prox_nonneg(v, 123.0), x)


def test_nonneg_moreau_with_nonpositive_projection():
    # The conjugate of the indicator of x ≥ 0 is the indicator of x ≤ 0.
    v = _random((10,), seed=11)

    assert torch.equal(prox_nonneg(v) - prox_nonneg(-v), v)


def test_box_matches_bounded_minimisation():
    v = 2 * _random((6,), seed=12)
    lower = torch.tensor([-1.0, -1.0, 0.0, -math.inf, 0.5, -0.3], dtype=torch.float64)
    upper = torch.tensor([1.0, 0.0, 2.0, 0.2, 0.5, math.inf], dtype=torch.float64)

    x = prox_box(v, None, lower, upper)

    bounds = [(None if math.isinf(lo) else lo, None if math.isinf(up) else up) for lo, up in zip(lower.tolist(), upper.tolist())]
    reference = _minimize_bounded(v.numpy(), _no_penalty, bounds)
    assert np.abs(x.numpy() - reference).max() < 1e-6
    assert x[4].item() == 0.5


def test_box_moreau_with_soft_threshold():
    # The conjugate of θ‖·‖₁ is the indicator of the box [−θ, θ].
    v = 2 * _random((20,), seed=13)
    threshold = 0.7

    total = prox_l1(v, threshold) + prox_box(v, None, -threshold, threshold)

    assert torch.allclose(total, v, rtol=0, atol=1e-15)


def test_box_gradcheck_bounds():
    v = torch.tensor([-2.0, -0.2, 0.3, 1.9], dtype=torch.float64, requires_grad=True)
    lower = torch.tensor(-1.0, dtype=torch.float64, requires_grad=True)
    upper = torch.tensor([1.0, 1.0, 1.0, 1.5], dtype=torch.float64, requires_grad=True)

    assert gradcheck(lambda x, lo, up: prox_box(x, None, lo, up), (v, lower, upper))


def test_box_and_nonneg_bad_arguments():
    x = _random((3,))
    with pytest.raises(ValueError, match=r"lower=2\.0 > upper=1\.0 at index \(1,\)"):
        prox_box(x, None, torch.tensor([0.0, 2.0, 0.0], dtype=torch.float64), 1.0)
    with pytest.raises(ValueError, match=r"\(4,\)"):
        prox_box(x, None, torch.zeros(4), 1.0)
    with pytest.raises(ValueError, match="complex128"):
        prox_box(x.to(torch.complex128), None, 0.0, 1.0)
    with pytest.raises(ValueError, match="complex128"):
        prox_nonneg(x.to(torch.complex128))


# ---------------------------------------------------------------- prox_elastic_net and prox_l1_nonneg


def test_elastic_net_matches_split_minimisation():
    # x = p − n with p, n ≥ 0 turns ‖x‖₁ into the linear term Σ(p + n), which L-BFGS-B handles with bounds.
    v = 2 * _random((6,), seed=14).numpy()
    threshold, l2_ratio = 0.6, 1.5

    def objective(pn):
        p, n = pn[:6], pn[6:]
        x = p - n
        value = 0.5 * np.sum((x - v) ** 2) + threshold * np.sum(pn) + 0.5 * threshold * l2_ratio * np.sum(x**2)
        gradient_x = x - v + threshold * l2_ratio * x
        return value, np.concatenate([gradient_x + threshold, -gradient_x + threshold])

    result = minimize(objective, np.zeros(12), jac=True, method="L-BFGS-B", bounds=[(0, None)] * 12, options={"ftol": 1e-16, "gtol": 1e-12})
    reference = result.x[:6] - result.x[6:]

    x = prox_elastic_net(torch.from_numpy(v), threshold, l2_ratio)

    assert np.abs(x.numpy() - reference).max() < 1e-6


@pytest.mark.parametrize("dtype", DTYPES)
def test_elastic_net_optimality_condition(dtype):
    v = 2 * _random((50,), dtype, seed=15)
    threshold, l2_ratio = 0.8, 0.5

    x = prox_elastic_net(v, threshold, l2_ratio)

    # v − x − θρx ∈ θ ∂‖x‖₁: equal to θ x/|x| where x ≠ 0, of modulus ≤ θ where x = 0.
    residual = v - x - threshold * l2_ratio * x
    nonzero = x != 0
    assert nonzero.any()
    assert (~nonzero).any()
    assert (residual[nonzero] - threshold * x[nonzero] / x[nonzero].abs()).abs().max() < 1e-14
    assert (residual[~nonzero].abs() <= threshold).all()


def test_elastic_net_without_l2_is_soft_threshold():
    v = _random((20,), seed=16)

    assert torch.equal(prox_elastic_net(v, 0.3, 0.0), prox_l1(v, 0.3))


@pytest.mark.parametrize("dtype", DTYPES)
def test_elastic_net_gradcheck(dtype):
    v = (2 * _random((8,), dtype, seed=17)).requires_grad_(True)
    threshold = torch.tensor(0.4, dtype=torch.float64, requires_grad=True)
    l2_ratio = torch.tensor(0.9, dtype=torch.float64, requires_grad=True)

    assert gradcheck(prox_elastic_net, (v, threshold, l2_ratio))


def test_l1_nonneg_matches_bounded_minimisation():
    v = 2 * _random((8,), seed=18).numpy()
    threshold = 0.5

    x = prox_l1_nonneg(torch.from_numpy(v), threshold)

    reference = _minimize_bounded(v, lambda z: (threshold * np.sum(z), np.full_like(z, threshold)), [(0, None)] * 8)
    assert np.abs(x.numpy() - reference).max() < 1e-6
    assert (x.numpy() >= 0).all()


def test_l1_nonneg_gradcheck():
    v = (2 * _random((8,), seed=19)).requires_grad_(True)
    threshold = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)

    assert gradcheck(prox_l1_nonneg, (v, threshold))


def test_elastic_net_and_l1_nonneg_bad_arguments():
    x = _random((3,))
    with pytest.raises(ValueError, match="-0.1"):
        prox_elastic_net(x, 0.5, -0.1)
    with pytest.raises(ValueError, match="-0.5"):
        prox_elastic_net(x, -0.5, 1.0)
    with pytest.raises(ValueError, match="-0.5"):
        prox_l1_nonneg(x, -0.5)
    with pytest.raises(ValueError, match="complex128"):
        prox_l1_nonneg(x.to(torch.complex128), 0.5)
