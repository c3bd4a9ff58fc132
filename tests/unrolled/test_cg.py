"""Batched conjugate gradient against torch.linalg.solve on explicit small matrices."""

from __future__ import annotations

import pytest
import torch

from unrolled.solvers.cg import conjugate_gradient

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def _hermitian_positive_definite(batch: int, n: int, generator: torch.Generator, complex_values: bool, condition: float = 50.0):
    """Return a (batch, n, n) stack of matrices Q diag(eigenvalues) Q^H with eigenvalues in [1, condition]."""
    real = torch.randn(batch, n, n, generator=generator, dtype=torch.float64)
    if complex_values:
        real = torch.complex(real, torch.randn(batch, n, n, generator=generator, dtype=torch.float64))
    q, _ = torch.linalg.qr(real)
    eigenvalues = torch.logspace(0, torch.log10(torch.tensor(condition)).item(), n, dtype=torch.float64)
    return (q * eigenvalues.to(q.dtype)) @ q.mH


def _random(shape, generator, complex_values):
    values = torch.randn(shape, generator=generator, dtype=torch.float64)
    if complex_values:
        values = torch.complex(values, torch.randn(shape, generator=generator, dtype=torch.float64))
    return values


@pytest.mark.parametrize("complex_values", [False, True], ids=["real", "complex"])
def test_cg_matches_linalg_solve(complex_values):
    generator = torch.Generator().manual_seed(0)
    matrices = _hermitian_positive_definite(5, 12, generator, complex_values)
    rhs = _random((5, 12), generator, complex_values)

    solution = conjugate_gradient(lambda v: (matrices @ v.unsqueeze(-1)).squeeze(-1), rhs, max_iter=100, tol=1e-13)

    expected = torch.linalg.solve(matrices, rhs)
    torch.testing.assert_close(solution, expected, rtol=0, atol=1e-10)


def test_cg_images_use_two_vector_dims():
    generator = torch.Generator().manual_seed(1)
    matrix = _hermitian_positive_definite(1, 20, generator, False)[0]
    rhs = torch.randn(3, 4, 5, generator=generator, dtype=torch.float64)

    def apply(images):
        return (images.reshape(3, 20) @ matrix).reshape(3, 4, 5)

    solution = conjugate_gradient(apply, rhs, max_iter=100, tol=1e-13, vector_dims=2)

    expected = torch.linalg.solve(matrix, rhs.reshape(3, 20).T).T.reshape(3, 4, 5)
    torch.testing.assert_close(solution, expected, rtol=0, atol=1e-10)


def test_cg_steps_are_per_sample():
    """Two samples with very different matrices take the iterates they would take alone."""
    generator = torch.Generator().manual_seed(2)
    matrices = torch.cat(
        [
            _hermitian_positive_definite(1, 10, generator, False, condition=2.0),
            1e3 * _hermitian_positive_definite(1, 10, generator, False, condition=1e3),
        ]
    )
    rhs = torch.randn(2, 10, generator=generator, dtype=torch.float64)

    def apply_to(mats):
        return lambda v: (mats @ v.unsqueeze(-1)).squeeze(-1)

    together = conjugate_gradient(apply_to(matrices), rhs, max_iter=4, tol=0.0)
    for i in range(2):
        alone = conjugate_gradient(apply_to(matrices[i : i + 1]), rhs[i : i + 1], max_iter=4, tol=0.0)
        torch.testing.assert_close(together[i : i + 1], alone, rtol=1e-13, atol=0)


def test_cg_stops_at_relative_tolerance():
    generator = torch.Generator().manual_seed(3)
    matrices = _hermitian_positive_definite(4, 30, generator, False, condition=1e3)
    rhs = torch.randn(4, 30, generator=generator, dtype=torch.float64)

    def apply(v):
        return (matrices @ v.unsqueeze(-1)).squeeze(-1)

    solution = conjugate_gradient(apply, rhs, max_iter=500, tol=1e-4)

    residual = torch.linalg.vector_norm(rhs - apply(solution), dim=-1)
    assert (residual <= 1e-4 * torch.linalg.vector_norm(rhs, dim=-1)).all()
    # Five iterations do not reach the tolerance at condition number 1e3, so the check above is not met trivially.
    early = conjugate_gradient(apply, rhs, max_iter=5, tol=1e-4)
    assert (torch.linalg.vector_norm(rhs - apply(early), dim=-1) > 1e-4 * torch.linalg.vector_norm(rhs, dim=-1)).any()


def test_cg_warm_start_at_solution_stays():
    generator = torch.Generator().manual_seed(4)
    matrices = _hermitian_positive_definite(3, 8, generator, False)
    rhs = torch.randn(3, 8, generator=generator, dtype=torch.float64)
    exact = torch.linalg.solve(matrices, rhs)

    def apply(v):
        return (matrices @ v.unsqueeze(-1)).squeeze(-1)

    from_solution = conjugate_gradient(apply, rhs, x0=exact, max_iter=3, tol=1e-8)
    torch.testing.assert_close(from_solution, exact, rtol=0, atol=1e-12)

    # A start near the solution reaches a tolerance that a cold start misses in the same iterations.
    near = exact + 1e-6 * torch.randn(3, 8, generator=generator, dtype=torch.float64)
    warm_error = (conjugate_gradient(apply, rhs, x0=near, max_iter=3, tol=0.0) - exact).norm()
    cold_error = (conjugate_gradient(apply, rhs, max_iter=3, tol=0.0) - exact).norm()
    assert warm_error < 1e-5
    assert cold_error > 1e-3


def test_cg_zero_rhs_gives_zero_and_finite_gradient():
    matrix = torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    rhs = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
    solution = conjugate_gradient(lambda v: v @ matrix, rhs, max_iter=5, tol=0.0)
    solution.sum().backward()
    assert torch.equal(solution, torch.zeros(2, 3, dtype=torch.float64))
    assert torch.isfinite(rhs.grad).all()


def test_cg_gradient_matches_linalg_solve():
    """After n iterations on an n x n system the iterate is the solution, and so are its derivatives."""
    generator = torch.Generator().manual_seed(5)
    base = _hermitian_positive_definite(1, 6, generator, False, condition=5.0)[0]
    factor = base.clone().requires_grad_(True)
    rhs = torch.randn(2, 6, generator=generator, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(2, 6, generator=generator, dtype=torch.float64)

    solution = conjugate_gradient(lambda v: v @ (factor @ factor.T), rhs, max_iter=6, tol=0.0)
    grads = torch.autograd.grad((solution * weights).sum(), (factor, rhs))

    expected = torch.linalg.solve(factor @ factor.T, rhs.T).T
    expected_grads = torch.autograd.grad((expected * weights).sum(), (factor, rhs))
    torch.testing.assert_close(solution, expected, rtol=0, atol=1e-10)
    for grad, expected_grad in zip(grads, expected_grads):
        torch.testing.assert_close(grad, expected_grad, rtol=1e-7, atol=1e-8)


@pytest.mark.parametrize("complex_values", [False, True], ids=["real", "complex"])
def test_cg_gradcheck_fixed_steps(complex_values):
    generator = torch.Generator().manual_seed(6)
    matrix = _hermitian_positive_definite(1, 4, generator, complex_values, condition=4.0)[0].requires_grad_(True)
    rhs = _random((2, 4), generator, complex_values).requires_grad_(True)

    def solve(matrix, rhs):
        # Hermitian part, so that every perturbation gradcheck makes stays a valid input.
        hermitian = (matrix + matrix.mH) / 2
        return conjugate_gradient(lambda v: v @ hermitian.mT, rhs, max_iter=3, tol=0.0)

    assert torch.autograd.gradcheck(solve, (matrix, rhs))


def test_cg_rejects_bad_arguments():
    rhs = torch.ones(2, 3)
    with pytest.raises(ValueError, match="max_iter.*-1"):
        conjugate_gradient(lambda v: v, rhs, max_iter=-1)
    with pytest.raises(ValueError, match="tol.*-0.5"):
        conjugate_gradient(lambda v: v, rhs, tol=-0.5)
    with pytest.raises(ValueError, match="vector_dims.*3"):
        conjugate_gradient(lambda v: v, rhs, vector_dims=3)
    with pytest.raises(ValueError, match=r"x0.*\(2, 3\).*\(3,\)"):
        conjugate_gradient(lambda v: v, rhs, x0=torch.ones(3))
