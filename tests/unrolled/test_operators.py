"""Operator checks, power iteration and the Lipschitz conventions of the least-squares term."""

from __future__ import annotations

import math

import pytest
import torch

from unrolled.operators import (
    LIPSCHITZ_SAFETY_MARGIN,
    check_measurements,
    check_operator,
    lipschitz_constant,
    power_iteration,
)

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def _gaussian(m: int, n: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(m, n, generator=generator, dtype=dtype)


def _largest_eigenvalue(A: torch.Tensor) -> float:
    A64 = A.to(torch.float64)
    return float(torch.linalg.eigvalsh(A64.T @ A64).max())


def _hessian_max_eigenvalue(objective, n: int) -> float:
    x = torch.zeros(n, dtype=torch.float64)
    hessian = torch.autograd.functional.hessian(objective, x)
    return float(torch.linalg.eigvalsh(hessian).max())


def _re_shape(shape: tuple[int, ...]) -> str:
    """Escape ``str(shape)`` for use in a regular expression."""
    return str(tuple(shape)).replace("(", r"\(").replace(")", r"\)")


DIAG_A = torch.diag(torch.tensor([3.0, 1.0], dtype=torch.float64))
DIAG_Y = torch.tensor([1.0, -2.0], dtype=torch.float64)


def test_power_iteration_diagonal():
    assert power_iteration(DIAG_A) == pytest.approx(9.0, rel=1e-9)


def test_lipschitz_half_least_squares():
    # The gradient of 0.5 * ||Ax - y||^2 has Lipschitz constant lambda_max(A^T A), its Hessian's top eigenvalue.
    def objective(x):
        return 0.5 * (DIAG_A @ x - DIAG_Y).square().sum()

    assert _hessian_max_eigenvalue(objective, 2) == pytest.approx(9.0, rel=1e-12)
    assert power_iteration(DIAG_A) == pytest.approx(_hessian_max_eigenvalue(objective, 2), rel=1e-9)


def test_lipschitz_plain_least_squares():
    # Without the 1/2 the constant doubles: 18 for A = diag(3, 1).
    def objective(x):
        return (DIAG_A @ x - DIAG_Y).square().sum()

    assert _hessian_max_eigenvalue(objective, 2) == pytest.approx(18.0, rel=1e-12)
    assert 2 * power_iteration(DIAG_A) == pytest.approx(_hessian_max_eigenvalue(objective, 2), rel=1e-9)


def test_lipschitz_gradient_difference():
    # ||grad f(u) - grad f(v)|| / ||u - v|| reaches L along the top eigenvector and stays below it elsewhere.
    def gradient(x):
        return DIAG_A.T @ (DIAG_A @ x - DIAG_Y)

    u = torch.tensor([0.3, -0.1], dtype=torch.float64)
    top = torch.tensor([1.0, 0.0], dtype=torch.float64)
    generator = torch.Generator().manual_seed(0)
    directions = torch.randn(100, 2, generator=generator, dtype=torch.float64)

    ratios = [float((gradient(u + d) - gradient(u)).norm() / d.norm()) for d in directions]

    assert float((gradient(u + top) - gradient(u)).norm()) == pytest.approx(9.0, rel=1e-12)
    assert max(ratios) <= 9.0 + 1e-12


@pytest.mark.parametrize("shape", [(31, 11), (11, 31)])
def test_power_iteration_float32_accuracy(shape):
    A = _gaussian(*shape)
    reference = _largest_eigenvalue(A)

    estimate = power_iteration(A, max_iter=5000)

    assert estimate == pytest.approx(reference, rel=1e-4)


@pytest.mark.parametrize("shape", [(31, 11), (11, 31), (250, 500)])
def test_power_iteration_float64_accuracy(shape):
    A = _gaussian(*shape, dtype=torch.float64)

    # The two largest eigenvalues of the 250 x 500 matrix are 0.4 % apart, so the default
    # 1000 iterations stop 6e-6 short. 5000 iterations get within 2e-7.
    assert power_iteration(A, max_iter=5000) == pytest.approx(_largest_eigenvalue(A), rel=1e-6)


@pytest.mark.parametrize("shape", [(31, 11), (11, 31), (250, 500)])
def test_lipschitz_constant_safe_bound(shape):
    A = _gaussian(*shape)
    reference = _largest_eigenvalue(A)

    lipschitz = lipschitz_constant(A)

    assert lipschitz >= reference
    assert lipschitz <= LIPSCHITZ_SAFETY_MARGIN * reference * (1 + 1e-9)


def test_lipschitz_constant_margin_one():
    A = _gaussian(31, 11, dtype=torch.float64)

    assert lipschitz_constant(A, margin=1.0) == pytest.approx(_largest_eigenvalue(A), rel=1e-6)


def test_lipschitz_constant_margin_below_one():
    with pytest.raises(ValueError, match=r"margin must be >= 1 .* got 0\.5"):
        lipschitz_constant(DIAG_A, margin=0.5)


def test_power_iteration_zero_matrix():
    assert power_iteration(torch.zeros(3, 4)) == 0.0


def test_power_iteration_same_seed_same_estimate():
    A = _gaussian(20, 30)

    assert power_iteration(A, max_iter=5, seed=3) == power_iteration(A, max_iter=5, seed=3)


@pytest.mark.parametrize("shape", [(5,), (2, 3, 4), ()])
def test_check_operator_not_2d(shape):
    A = torch.ones(shape)

    with pytest.raises(ValueError, match=rf"A must be a 2-D \(m, n\) tensor, got shape {_re_shape(shape)}"):
        check_operator(A)


@pytest.mark.parametrize("bad_value", [math.nan, math.inf, -math.inf])
def test_check_operator_not_finite(bad_value):
    A = torch.ones(3, 4)
    A[1, 2] = bad_value

    with pytest.raises(ValueError, match="A contains NaN or Inf entries; expected a finite matrix"):
        check_operator(A)


def test_check_operator_not_tensor():
    with pytest.raises(TypeError, match="A must be a torch.Tensor, got list"):
        check_operator([[1.0, 0.0], [0.0, 1.0]])


@pytest.mark.parametrize("shape", [(4,), (2, 4), (3, 2, 6)])
def test_check_measurements_wrong_length(shape):
    A = torch.ones(5, 3)

    with pytest.raises(ValueError, match=rf"m = A.shape\[0\] = 5, got shape {_re_shape(shape)}"):
        check_measurements(torch.ones(shape), A)


def test_check_measurements_scalar():
    with pytest.raises(ValueError, match=r"y must have shape \(\.\.\., m\)"):
        check_measurements(torch.tensor(1.0), torch.ones(5, 3))


@pytest.mark.parametrize("bad_value", [math.nan, math.inf])
def test_check_measurements_not_finite(bad_value):
    y = torch.ones(2, 5)
    y[1, 3] = bad_value

    with pytest.raises(ValueError, match="y contains NaN or Inf entries; expected finite measurements"):
        check_measurements(y, torch.ones(5, 3))


def test_check_measurements_valid():
    check_measurements(torch.ones(7, 2, 5), torch.ones(5, 3))
