"""Discrete gradient, its adjoint and spectrum, total variation and its prox against explicit matrices, scikit-image and scipy."""

from __future__ import annotations

import cmath
import warnings

import numpy as np
import pytest
import scipy.fft
import torch
from scipy.optimize import minimize
from skimage.restoration import denoise_tv_chambolle
from torch.autograd import gradcheck

from unrolled.tv import (
    finite_difference,
    finite_difference_adjoint,
    finite_difference_spectrum,
    prox_tv,
    total_variation,
    tv_duality_gap,
)

pytestmark = pytest.mark.usefixtures("single_torch_thread")

BOUNDARIES = ["neumann", "periodic"]
DTYPES = [torch.float64, torch.complex128]


def _random(shape: tuple[int, ...], dtype: torch.dtype = torch.float64, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator, dtype=dtype)


def _difference_matrix(n: int, boundary: str) -> np.ndarray:
    """Forward differences along one axis as an (n, n) matrix, written out entry by entry."""
    matrix = np.zeros((n, n))
    for i in range(n):
        if boundary == "periodic" or i < n - 1:
            matrix[i, i] -= 1
            matrix[i, (i + 1) % n] += 1
    return matrix


def _gradient_matrix(height: int, width: int, boundary: str = "neumann") -> np.ndarray:
    """∇ on row-major flattened (H, W) images, shape (2HW, HW): row differences stacked over column differences."""
    rows = np.kron(_difference_matrix(height, boundary), np.eye(width))
    columns = np.kron(np.eye(height), _difference_matrix(width, boundary))
    return np.vstack([rows, columns])


def _primal_objective(x: torch.Tensor, v: torch.Tensor, threshold: float, isotropic: bool = True) -> float:
    return (0.5 * (x - v).abs().square().sum() + threshold * total_variation(x, isotropic)).item()


def _square_image(size: int = 16, seed: int = 0) -> np.ndarray:
    """A bright square on a dark background with Gaussian noise of std 0.2."""
    image = np.zeros((size, size))
    image[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 1
    return image + 0.2 * np.random.default_rng(seed).standard_normal(image.shape)


# ---------------------------------------------------------------- discrete gradient


@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_finite_difference_matches_matrix(boundary):
    x = _random((2, 5, 7), seed=1)

    gradient = finite_difference(x, boundary)

    expected = (_gradient_matrix(5, 7, boundary) @ x.reshape(2, 35).numpy().T).T.reshape(2, 2, 5, 7)
    assert gradient.shape == (2, 2, 5, 7)
    assert np.abs(gradient.numpy() - expected).max() < 1e-14


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("boundary", BOUNDARIES)
@pytest.mark.parametrize("shape", [(3, 5, 7), (1, 4), (4, 1), (1, 1)])
def test_finite_difference_adjoint_identity(shape, boundary, dtype):
    x = _random(shape, dtype, seed=2)
    p = _random((*shape[:-2], 2, *shape[-2:]), dtype, seed=3)

    left = torch.vdot(finite_difference(x, boundary).flatten(), p.flatten())
    right = torch.vdot(x.flatten(), finite_difference_adjoint(p, boundary).flatten())

    assert abs(left - right) < 1e-10


@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_finite_difference_spectrum_matches_operator(boundary):
    height, width = 4, 6
    gradient = _gradient_matrix(height, width, boundary)
    normal_operator = gradient.T @ gradient
    spectrum = finite_difference_spectrum((height, width), boundary)
    x = _random((3, height, width), seed=4).numpy()

    direct = (normal_operator @ x.reshape(3, -1).T).T.reshape(x.shape)
    if boundary == "periodic":
        diagonalised = scipy.fft.ifft2(spectrum.numpy() * scipy.fft.fft2(x)).real
    else:
        diagonalised = scipy.fft.idctn(spectrum.numpy() * scipy.fft.dctn(x, axes=(-2, -1), norm="ortho"), axes=(-2, -1), norm="ortho")

    assert spectrum.shape == (height, width)
    assert np.abs(direct - diagonalised).max() < 1e-12
    assert np.abs(np.sort(spectrum.numpy().ravel()) - np.linalg.eigvalsh(normal_operator)).max() < 1e-12
    assert spectrum.max() <= 8


def test_finite_difference_spectrum_solves_regularised_system():
    # (I + ρ∇ᴴ∇)x = b solved with two FFTs, as in an ADMM step with a masked Fourier operator.
    rho = 0.7
    b = _random((8, 10), torch.complex128, seed=5)

    spectrum = finite_difference_spectrum((8, 10), dtype=torch.float64)
    x = torch.fft.ifft2(torch.fft.fft2(b) / (1 + rho * spectrum))

    residual = x + rho * finite_difference_adjoint(finite_difference(x, "periodic"), "periodic") - b
    assert residual.abs().max() < 1e-12


def test_finite_difference_bad_arguments():
    with pytest.raises(ValueError, match="'dirichlet'"):
        finite_difference(torch.zeros(3, 3), "dirichlet")
    with pytest.raises(ValueError, match=r"\(3,\)"):
        finite_difference(torch.zeros(3))
    with pytest.raises(ValueError, match=r"\(3, 3, 3\)"):
        finite_difference_adjoint(torch.zeros(3, 3, 3))
    with pytest.raises(ValueError, match=r"\(4, 0\)"):
        finite_difference_spectrum((4, 0))


# ---------------------------------------------------------------- total variation


@pytest.mark.parametrize("dtype", DTYPES)
def test_total_variation_matches_numpy(dtype):
    x = _random((2, 5, 6), dtype, seed=6).numpy()
    rows = np.zeros_like(x)
    columns = np.zeros_like(x)
    rows[:, :-1] = np.diff(x, axis=1)
    columns[:, :, :-1] = np.diff(x, axis=2)

    isotropic = total_variation(torch.from_numpy(x))
    anisotropic = total_variation(torch.from_numpy(x), isotropic=False)

    expected_isotropic = np.sqrt(np.abs(rows) ** 2 + np.abs(columns) ** 2).sum(axis=(1, 2))
    expected_anisotropic = (np.abs(rows) + np.abs(columns)).sum(axis=(1, 2))
    assert isotropic.shape == (2,)
    assert np.abs(isotropic.numpy() - expected_isotropic).max() < 1e-12
    assert np.abs(anisotropic.numpy() - expected_anisotropic).max() < 1e-12


def test_total_variation_constant_image_gradient_finite():
    x = torch.full((4, 4), 2.0, dtype=torch.float64, requires_grad=True)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        value = total_variation(x)
        value.backward()

    assert value.item() == 0
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("isotropic", [True, False])
def test_total_variation_gradcheck(isotropic):
    x = _random((2, 4, 5), seed=7).requires_grad_(True)

    assert gradcheck(lambda image: total_variation(image, isotropic, "periodic"), (x,))


# ---------------------------------------------------------------- prox_tv against references


def test_prox_tv_matches_skimage_chambolle():
    # scikit-image minimises ½‖u − f‖² + weight·TV(u), isotropic with Neumann differences: weight = θ.
    image = _square_image()
    threshold = 0.1

    ours = prox_tv(torch.from_numpy(image), threshold, max_iter=3000, tol=0)
    reference = denoise_tv_chambolle(image, weight=threshold, eps=1e-14, max_num_iter=5000)

    assert np.abs(ours.numpy() - reference).max() < 5e-5
    assert _primal_objective(ours, torch.from_numpy(image), threshold) <= _primal_objective(torch.from_numpy(reference), torch.from_numpy(image), threshold)


def _prox_tv_scipy(v: np.ndarray, threshold: float, isotropic: bool) -> np.ndarray:
    """Solve the dual min_{p ∈ P} ½‖v − ∇ᵀp‖² with scipy on a matrix ∇ built independently of unrolled.tv."""
    gradient = _gradient_matrix(*v.shape)
    n_pixels = v.size

    def objective(p):
        residual = v.ravel() - gradient.T @ p
        return 0.5 * residual @ residual, -gradient @ residual

    start = np.zeros(2 * n_pixels)
    if isotropic:
        constraint = {
            "type": "ineq",
            "fun": lambda p: threshold**2 - p[:n_pixels] ** 2 - p[n_pixels:] ** 2,
            "jac": lambda p: np.hstack([np.diag(-2 * p[:n_pixels]), np.diag(-2 * p[n_pixels:])]),
        }
        result = minimize(objective, start, jac=True, method="SLSQP", constraints=[constraint], options={"ftol": 1e-16, "maxiter": 2000})
    else:
        bounds = [(-threshold, threshold)] * (2 * n_pixels)
        result = minimize(objective, start, jac=True, method="L-BFGS-B", bounds=bounds, options={"ftol": 1e-16, "gtol": 1e-12, "maxiter": 10_000})
    return (v.ravel() - gradient.T @ result.x).reshape(v.shape)


@pytest.mark.parametrize("isotropic", [True, False])
def test_prox_tv_matches_scipy_on_tiny_image(isotropic):
    v = _random((6, 6), seed=8)
    threshold = 0.3

    ours = prox_tv(v, threshold, isotropic=isotropic, max_iter=5000, tol=0)
    reference = _prox_tv_scipy(v.numpy(), threshold, isotropic)

    assert np.abs(ours.numpy() - reference).max() < 1e-6
    assert _primal_objective(ours, v, threshold, isotropic) <= _primal_objective(torch.from_numpy(reference), v, threshold, isotropic) + 1e-12


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("isotropic", [True, False])
def test_prox_tv_duality_gap_vanishes(isotropic, dtype):
    v = _random((2, 12, 12), dtype, seed=9)
    threshold = 0.2

    gaps = []
    for max_iter in (10, 100, 2000):
        _, info = prox_tv(v, threshold, isotropic=isotropic, max_iter=max_iter, tol=0, return_info=True)
        gaps.append(tv_duality_gap(v, info.dual, threshold, isotropic))

    assert (gaps[0] > gaps[1]).all()
    assert (gaps[1] > gaps[2]).all()
    assert (gaps[2] >= -1e-10).all()
    assert (gaps[2] < 1e-8).all()


@pytest.mark.parametrize("isotropic", [True, False])
def test_prox_tv_complex_constant_phase(isotropic):
    # With x = e^{iφ} u and u real, the complex TV equals TV(u), so the prox is e^{iφ} prox(u).
    u = _random((8, 8), seed=10)
    phase = cmath.exp(0.7j)

    complex_result = prox_tv(phase * u.to(torch.complex128), 0.3, isotropic=isotropic, max_iter=50, tol=0)
    real_result = prox_tv(u, 0.3, isotropic=isotropic, max_iter=50, tol=0)

    assert (complex_result - phase * real_result).abs().max() < 1e-13


def test_prox_tv_complex_couples_real_and_imaginary_parts():
    # The isotropic complex TV is the isotropic TV of the 4-vector (Re, Im) of both differences, not
    # the sum of the TVs of the real and imaginary parts, so the two results must differ.
    x = _random((8, 8), torch.complex128, seed=11)

    coupled = prox_tv(x, 0.3, max_iter=2000, tol=0)
    separate = prox_tv(x.real, 0.3, max_iter=2000, tol=0) + 1j * prox_tv(x.imag, 0.3, max_iter=2000, tol=0)

    assert _primal_objective(coupled, x, 0.3) < _primal_objective(separate, x, 0.3) - 1e-3


# ---------------------------------------------------------------- prox_tv behaviour


@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_prox_tv_constant_image_fixed_point(boundary):
    x = torch.full((2, 5, 6), -1.25, dtype=torch.float64)

    result, info = prox_tv(x, 0.5, boundary=boundary, return_info=True)

    assert torch.equal(result, x)
    assert info.n_iter == 1
    assert info.converged


def test_prox_tv_per_image_threshold():
    x = _random((3, 8, 8), seed=12)
    threshold = torch.tensor([0.0, 0.1, 0.5], dtype=torch.float64)[:, None, None]

    batched = prox_tv(x, threshold, max_iter=30, tol=0)

    assert torch.equal(batched[0], x[0])
    for image in (1, 2):
        single = prox_tv(x[image], threshold[image].item(), max_iter=30, tol=0)
        assert (batched[image] - single).abs().max() < 1e-14


def test_prox_tv_stops_at_tolerance():
    x = _random((2, 10, 10), seed=13)

    _, info = prox_tv(x, 0.2, max_iter=1000, tol=1e-4, return_info=True)
    _, previous = prox_tv(x, 0.2, max_iter=info.n_iter - 1, tol=1e-4, return_info=True)

    change = torch.linalg.vector_norm(info.dual - previous.dual, dim=(-3, -2, -1))
    size = torch.linalg.vector_norm(info.dual, dim=(-3, -2, -1))
    assert info.converged
    assert 1 < info.n_iter < 1000
    assert (change <= 1e-4 * size).all()
    assert not previous.converged


def test_prox_tv_not_converged_at_max_iter():
    _, info = prox_tv(_random((10, 10), seed=14), 0.2, max_iter=5, tol=1e-12, return_info=True)

    assert info.n_iter == 5
    assert not info.converged


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("isotropic", [True, False])
def test_prox_tv_gradcheck(isotropic, dtype):
    x = _random((4, 5), dtype, seed=15).requires_grad_(True)
    threshold = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)

    assert gradcheck(lambda image, theta: prox_tv(image, theta, isotropic=isotropic, max_iter=15, tol=0), (x, threshold))


def test_prox_tv_bad_arguments():
    x = torch.zeros(3, 4, 4)
    with pytest.raises(ValueError, match=r"\(3,\)"):
        prox_tv(x, torch.ones(3))
    with pytest.raises(ValueError, match=r"\(2, 1, 1\)"):
        prox_tv(x, torch.ones(2, 1, 1))
    with pytest.raises(ValueError, match="-0.1"):
        prox_tv(x, -0.1)
    with pytest.raises(ValueError, match="max_iter must be >= 1, got 0"):
        prox_tv(x, 0.1, max_iter=0)
    with pytest.raises(ValueError, match="tol must be >= 0, got -1"):
        prox_tv(x, 0.1, tol=-1.0)
    with pytest.raises(ValueError, match="'reflect'"):
        prox_tv(x, 0.1, boundary="reflect")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_prox_tv_cuda_matches_cpu():
    x = _random((3, 32, 32), seed=16)
    threshold = torch.tensor([0.05, 0.1, 0.2], dtype=torch.float64)[:, None, None]

    on_device = prox_tv(x.cuda(), threshold.cuda(), max_iter=50, tol=0)

    assert on_device.device.type == "cuda"
    assert (on_device.cpu() - prox_tv(x, threshold, max_iter=50, tol=0)).abs().max() < 1e-10
