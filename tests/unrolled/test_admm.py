"""Classical ADMM: the Lasso against FISTA and scikit-learn, TV and wavelet imaging problems against references."""

from __future__ import annotations

import math

import pytest
import torch
from skimage import data
from skimage.transform import resize
from sklearn.linear_model import Lasso

from unrolled.degradations import add_salt_and_pepper
from unrolled.metrics import psnr_db
from unrolled.operators import BlockCS, MaskedFourier, PixelMask, cartesian_mask, gaussian_block_matrix, gaussian_matrix
from unrolled.solvers.admm import admm_lasso
from unrolled.solvers.admm_imaging import admm_tv, admm_wavelet, huber, prox_huber
from unrolled.solvers.ista import fista
from unrolled.transforms import Wavelet2D
from unrolled.tv import finite_difference, prox_tv, total_variation

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def _camera(size: int) -> torch.Tensor:
    """The scikit-image camera man, downsampled to size x size, on the [0, 1] scale, float64."""
    return torch.from_numpy(resize(data.camera() / 255.0, (size, size), anti_aliasing=True)).double()


def _lasso_problem(m: int, n: int, batch: int = 3, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    A = gaussian_matrix(m, n, seed=seed)
    x = torch.randn(batch, n, generator=generator, dtype=torch.float64) * (torch.rand(batch, n, generator=generator) < 0.2)
    y = x @ A.T + 0.01 * torch.randn(batch, m, generator=generator, dtype=torch.float64)
    return A, y


@pytest.mark.parametrize("shape", [(30, 60), (60, 30)], ids=["wide_inversion_lemma", "tall_cholesky"])
def test_lasso_matches_fista_and_sklearn(shape):
    m, n = shape
    A, y = _lasso_problem(m, n)
    reg = 0.05

    result = admm_lasso(A, y, reg, rho=1.0, max_iter=5000, abs_tol=1e-12, rel_tol=1e-12)
    reference = fista(A, y, reg, max_iter=20000, tol=1e-15).x

    torch.testing.assert_close(result.x, reference, rtol=0, atol=1e-6)
    torch.testing.assert_close(result.z[0], reference, rtol=0, atol=1e-6)
    for i in range(y.shape[0]):
        # scikit-learn divides the data term by the number of rows, so alpha = reg / m.
        lasso = Lasso(alpha=reg / m, fit_intercept=False, tol=1e-14, max_iter=100000).fit(A.numpy(), y[i].numpy())
        torch.testing.assert_close(result.x[i], torch.from_numpy(lasso.coef_), rtol=0, atol=1e-6)


def test_lasso_residual_balancing_is_per_sample():
    """A batch gives each sample the iterates it gets alone, with its own rho."""
    A, y = _lasso_problem(40, 80, batch=3, seed=1)
    y = y * torch.tensor([[1.0], [30.0], [0.03]], dtype=torch.float64)
    reg = torch.tensor([[0.05], [1.0], [0.001]], dtype=torch.float64)

    together = admm_lasso(A, y, reg, rho=1.0, max_iter=60, abs_tol=0.0, rel_tol=0.0, residual_balancing=True)

    assert len(set(together.rho.tolist())) > 1
    for i in range(3):
        alone = admm_lasso(A, y[i : i + 1], reg[i : i + 1], rho=1.0, max_iter=60, abs_tol=0.0, rel_tol=0.0, residual_balancing=True)
        torch.testing.assert_close(together.x[i : i + 1], alone.x, rtol=1e-10, atol=1e-12)
        assert together.rho[i] == alone.rho[0]


def test_lasso_residuals_below_tolerance():
    A, y = _lasso_problem(40, 80, seed=2)
    abs_tol, rel_tol = 1e-6, 1e-4

    result = admm_lasso(A, y, 0.05, rho=1.0, max_iter=2000, abs_tol=abs_tol, rel_tol=rel_tol, trace=True)

    assert result.n_iter < 2000
    assert bool(result.converged.all())
    primal = torch.linalg.vector_norm(result.x - result.z[0], dim=-1)
    torch.testing.assert_close(primal, result.primal_residual, rtol=1e-12, atol=0)
    primal_tol = math.sqrt(80) * abs_tol + rel_tol * torch.maximum(result.x.norm(dim=-1), result.z[0].norm(dim=-1))
    dual_tol = math.sqrt(80) * abs_tol + rel_tol * result.rho * result.u[0].norm(dim=-1)
    assert (primal <= primal_tol).all()
    assert (result.dual_residual <= dual_tol).all()
    assert len(result.trace.primal_residual) == result.n_iter
    assert result.trace.primal_residual[-1] == pytest.approx(float(result.primal_residual.mean()), rel=1e-12)


@pytest.mark.parametrize("isotropic", [True, False], ids=["isotropic", "anisotropic"])
def test_tv_denoising_matches_prox_tv(isotropic):
    image = _camera(32)
    generator = torch.Generator().manual_seed(3)
    noisy = image + 0.1 * torch.randn(image.shape, generator=generator, dtype=torch.float64)
    operator = PixelMask(torch.ones(32, 32, dtype=torch.float64))

    result = admm_tv(operator, noisy, 0.1, rho=8.0, isotropic=isotropic, max_iter=500, abs_tol=0.0, rel_tol=0.0)
    reference = prox_tv(noisy, 0.1, isotropic=isotropic, max_iter=3000, tol=0.0, boundary="periodic")

    torch.testing.assert_close(result.x, reference, rtol=0, atol=1e-4)


def test_tv_inpainting_reaches_long_run():
    image = _camera(32)
    generator = torch.Generator().manual_seed(4)
    mask = (torch.rand(32, 32, generator=generator) < 0.5).double()
    operator = PixelMask(mask)
    y = operator.forward(image)

    result = admm_tv(operator, y, 0.02, rho=0.3, max_iter=300, abs_tol=0.0, rel_tol=0.0, trace=True, reference=image)
    long_run = admm_tv(operator, y, 0.02, rho=1.0, max_iter=600, abs_tol=0.0, rel_tol=0.0, cg_tol=1e-8)
    objective = result.trace.objective
    long_objective = float(0.5 * (operator.forward(long_run.x) - y).square().sum() + 0.02 * total_variation(long_run.x))

    assert objective[-1] < objective[9]
    assert objective[-1] == pytest.approx(long_objective, rel=1e-4)
    assert objective[-1] >= long_objective * (1 - 1e-6)
    # Inpainting half the pixels with TV recovers the image far better than the zero-filled measurement.
    assert result.trace.psnr_db[-1] > float(psnr_db(y, image)) + 10


def test_tv_block_cs_reaches_long_run():
    image = _camera(32)[:30, :30]
    operator = BlockCS(gaussian_block_matrix(0.3, block_size=10, seed=5), (30, 30))
    y = operator.forward(image)

    result = admm_tv(operator, y, 0.01, rho=0.3, max_iter=200, abs_tol=0.0, rel_tol=0.0, trace=True)
    long_run = admm_tv(operator, y, 0.01, rho=0.3, max_iter=600, abs_tol=0.0, rel_tol=0.0, cg_tol=1e-8)
    long_objective = float(0.5 * (operator.forward(long_run.x) - y).square().sum() + 0.01 * total_variation(long_run.x))

    assert result.trace.objective[-1] < result.trace.objective[9]
    assert result.trace.objective[-1] == pytest.approx(long_objective, rel=1e-4)


def _mri_problem(size: int = 32, seed: int = 6):
    image = _camera(size)
    rows = torch.arange(size, dtype=torch.float64)[:, None]
    complex_image = image * torch.exp(1j * (0.3 * torch.sin(2 * math.pi * rows / size)))
    generator = torch.Generator().manual_seed(seed)
    operator = MaskedFourier(cartesian_mask((size, size), 0.4, generator, dtype=torch.float64))
    return complex_image, operator, operator.forward(complex_image)


def _exact_solve_cases():
    """Problems whose x-update has an exact solve, one per branch of that solve."""
    _, mri, mri_y = _mri_problem()
    image = _camera(32)
    noisy = add_salt_and_pepper(image, 0.1, torch.Generator().manual_seed(14))
    denoising = PixelMask(torch.ones(32, 32, dtype=torch.float64))
    return {
        "mri_tv": (admm_tv, mri, mri_y, dict(reg=0.01, rho=0.5)),
        "mri_wavelet": (admm_wavelet, mri, mri_y, dict(reg=0.01, rho=0.5, levels=2)),
        "denoising_l1_box": (admm_tv, denoising, noisy, dict(reg=0.5, rho=1.0, data_term="l1", box=(0.0, 1.0))),
        "denoising_huber": (admm_tv, denoising, noisy, dict(reg=0.2, rho=1.0, data_term="huber", huber_delta=0.05)),
    }


@pytest.mark.parametrize("case", ["mri_tv", "mri_wavelet", "denoising_l1_box", "denoising_huber"])
def test_exact_and_cg_updates_agree(case):
    solver, operator, y, options = _exact_solve_cases()[case]
    options = dict(options, max_iter=20, abs_tol=0.0, rel_tol=0.0)

    exact = solver(operator, y, x_solver="exact", **options)
    by_cg = solver(operator, y, x_solver="cg", cg_max_iter=300, cg_tol=1e-14, **options)

    assert torch.is_complex(exact.x) == operator.complex_domain
    torch.testing.assert_close(by_cg.x, exact.x, rtol=0, atol=1e-8)
    for cg_block, exact_block in zip(by_cg.z, exact.z):
        torch.testing.assert_close(cg_block, exact_block, rtol=0, atol=1e-8)


def test_mri_tv_improves_on_zero_filling():
    image, operator, y = _mri_problem()
    result = admm_tv(operator, y, 0.002, rho=0.05, max_iter=200, residual_balancing=True)
    zero_filled = operator.zero_filled(y)
    assert float(psnr_db(result.x.abs(), image.abs())) > float(psnr_db(zero_filled.abs(), image.abs())) + 3


@pytest.mark.parametrize("bad_rho", [1e-3, 1e3])
def test_residual_balancing_beats_bad_fixed_rho(bad_rho):
    image = _camera(32)
    generator = torch.Generator().manual_seed(7)
    noisy = image + 0.1 * torch.randn(image.shape, generator=generator, dtype=torch.float64)
    operator = PixelMask(torch.ones(32, 32, dtype=torch.float64))
    options = dict(max_iter=1000, abs_tol=1e-5, rel_tol=1e-4)

    fixed = admm_tv(operator, noisy, 0.1, rho=bad_rho, **options)
    balanced = admm_tv(operator, noisy, 0.1, rho=bad_rho, residual_balancing=True, trace=True, **options)

    assert bool(balanced.converged.all())
    assert balanced.n_iter < fixed.n_iter / 3
    # Balancing moved rho by powers of 2 away from the bad start.
    assert balanced.trace.rho[-1] != bad_rho
    assert math.log2(balanced.trace.rho[-1] / bad_rho) == pytest.approx(round(math.log2(balanced.trace.rho[-1] / bad_rho)))


def test_tv_residuals_reported_below_tolerance():
    image = _camera(32)
    operator = PixelMask(torch.ones(32, 32, dtype=torch.float64))
    abs_tol, rel_tol = 1e-5, 1e-4

    result = admm_tv(operator, image, 0.05, rho=2.0, max_iter=1000, abs_tol=abs_tol, rel_tol=rel_tol, isotropic=False)

    assert bool(result.converged.all())
    gradient = finite_difference(result.x, "periodic")
    primal = torch.linalg.vector_norm(gradient - result.z[0])
    assert float(primal) == pytest.approx(float(result.primal_residual), rel=1e-10)
    assert float(primal) <= math.sqrt(2 * 32 * 32) * abs_tol + rel_tol * max(float(gradient.norm()), float(result.z[0].norm()))


def test_l1_data_beats_l2_salt_pepper():
    image = _camera(64)
    noisy = add_salt_and_pepper(image, 0.1, torch.Generator().manual_seed(8))
    operator = PixelMask(torch.ones(64, 64, dtype=torch.float64))

    best_l2 = max(
        float(psnr_db(admm_tv(operator, noisy, reg, rho=1.0, max_iter=300, residual_balancing=True).x, image))
        for reg in (0.1, 0.2, 0.4)
    )
    robust = admm_tv(operator, noisy, 0.5, rho=1.0, data_term="l1", max_iter=300, residual_balancing=True)

    assert float(psnr_db(robust.x, image)) > best_l2 + 5


def test_huber_prox_optimality():
    generator = torch.Generator().manual_seed(9)
    x = 0.3 * torch.randn(200, generator=generator, dtype=torch.float64)
    threshold, delta = 0.7, 0.1

    z = prox_huber(x, threshold, delta)

    # z - x + threshold * h'(z) = 0, with h'(z) = z inside [-delta, delta] and delta * sign(z) outside.
    derivative = torch.where(z.abs() <= delta, z, delta * torch.sign(z))
    torch.testing.assert_close(z - x + threshold * derivative, torch.zeros_like(x), rtol=0, atol=1e-14)
    complex_x = torch.complex(x, 0.5 * x.flip(0))
    complex_z = prox_huber(complex_x, threshold, delta)
    torch.testing.assert_close(torch.angle(complex_z), torch.angle(complex_x), rtol=0, atol=1e-12)
    torch.testing.assert_close(huber(torch.tensor([0.05, -0.3]), 0.1), torch.tensor([0.00125, 0.025]))


def test_huber_with_large_delta_equals_l2():
    image = _camera(32)
    generator = torch.Generator().manual_seed(10)
    operator = PixelMask(torch.ones(32, 32, dtype=torch.float64))
    y = image + 0.05 * torch.randn(image.shape, generator=generator, dtype=torch.float64)
    options = dict(max_iter=3000, abs_tol=1e-6, rel_tol=1e-6, residual_balancing=True)

    l2 = admm_tv(operator, y, 0.05, rho=1.0, **options)
    robust = admm_tv(operator, y, 0.05, rho=1.0, data_term="huber", huber_delta=1e3, **options)

    torch.testing.assert_close(robust.x, l2.x, rtol=0, atol=1e-4)


def test_box_constraint_holds():
    image = _camera(32)
    generator = torch.Generator().manual_seed(11)
    noisy = image + 0.2 * torch.randn(image.shape, generator=generator, dtype=torch.float64)
    operator = PixelMask(torch.ones(32, 32, dtype=torch.float64))

    free = admm_tv(operator, noisy, 0.05, rho=1.0, max_iter=2000, abs_tol=1e-8, rel_tol=1e-8)
    boxed = admm_tv(operator, noisy, 0.05, rho=1.0, box=(0.0, 1.0), max_iter=2000, abs_tol=1e-8, rel_tol=1e-8)

    assert float(free.x.min()) < -0.01 or float(free.x.max()) > 1.01
    assert float(boxed.x.min()) > -1e-5
    assert float(boxed.x.max()) < 1 + 1e-5
    assert float(boxed.z[1].min()) >= 0.0
    assert float(boxed.z[1].max()) <= 1.0

    def objective(x):
        return float(0.5 * (x - noisy).square().sum() + 0.05 * total_variation(x, True, "periodic"))

    assert objective(boxed.x) >= objective(free.x) - 1e-7


def test_wavelet_denoising_is_closed_form():
    """With A = I the problem is the prox of reg ||W x||_1, which is W^H soft(W y, reg) for orthonormal W."""
    image = _camera(32)
    generator = torch.Generator().manual_seed(12)
    noisy = image + 0.1 * torch.randn(image.shape, generator=generator, dtype=torch.float64)
    operator = PixelMask(torch.ones(32, 32, dtype=torch.float64))
    transform = Wavelet2D("db2", 2)

    result = admm_wavelet(operator, noisy, 0.08, rho=1.0, wavelet="db2", levels=2, max_iter=500, abs_tol=1e-12, rel_tol=1e-12)

    coefficients = transform.forward(noisy)
    expected = transform.inverse(torch.sign(coefficients) * torch.relu(coefficients.abs() - 0.08))
    torch.testing.assert_close(result.x, expected, rtol=0, atol=1e-9)


def test_wavelet_mri_fixed_point():
    """x* = W^H soft(W(x* - A^H(Ax* - y)), reg), the optimality condition with step 1 = 1/||A||^2."""
    _, operator, y = _mri_problem()
    transform = Wavelet2D("db4", 2)

    result = admm_wavelet(operator, y, 0.01, rho=0.03, levels=2, max_iter=1000, abs_tol=0.0, rel_tol=0.0)

    x = result.x
    coefficients = transform.forward(x - operator.adjoint(operator.forward(x) - y))
    shrunk = coefficients * torch.relu(coefficients.abs() - 0.01) / coefficients.abs().clamp_min(1e-300)
    torch.testing.assert_close(transform.inverse(shrunk), x, rtol=0, atol=1e-8)


def test_trace_has_one_entry_per_iteration():
    image = _camera(32)
    operator = PixelMask(torch.ones(32, 32, dtype=torch.float64))
    result = admm_tv(operator, image, 0.05, rho=1.0, max_iter=25, abs_tol=0.0, rel_tol=0.0, trace=True, reference=image)

    trace = result.trace
    assert result.n_iter == 25
    for column in (trace.primal_residual, trace.dual_residual, trace.rho, trace.objective, trace.psnr_db, trace.time_s):
        assert len(column) == 25
    assert trace.rho == [1.0] * 25
    assert trace.time_s == sorted(trace.time_s)
    assert trace.psnr_db[-1] == pytest.approx(float(psnr_db(result.x, image)), rel=1e-12)
    assert admm_tv(operator, image, 0.05, max_iter=5).trace is None


def test_batched_images_match_single_runs():
    image = _camera(32)
    generator = torch.Generator().manual_seed(13)
    noisy = image + 0.1 * torch.randn(3, 32, 32, generator=generator, dtype=torch.float64)
    operator = PixelMask((torch.rand(32, 32, generator=generator) < 0.7).double())
    y = operator.forward(noisy)
    options = dict(max_iter=30, abs_tol=0.0, rel_tol=0.0, residual_balancing=True, cg_tol=0.0, cg_max_iter=5)

    together = admm_tv(operator, y, 0.05, rho=1.0, **options)
    for i in range(3):
        alone = admm_tv(operator, y[i], 0.05, rho=1.0, **options)
        torch.testing.assert_close(together.x[i], alone.x, rtol=0, atol=1e-10)


def test_bad_arguments_raise_value_error():
    A, y = _lasso_problem(10, 20)
    with pytest.raises(ValueError, match="reg.*-0.1"):
        admm_lasso(A, y, -0.1)
    with pytest.raises(ValueError, match="rho.*0"):
        admm_lasso(A, y, 0.1, rho=0.0)
    with pytest.raises(ValueError, match=r"rho.*-1"):
        admm_lasso(A, y, 0.1, rho=-1.0)
    with pytest.raises(ValueError, match=r"m = A.shape\[0\] = 10.*\(3, 11\)"):
        admm_lasso(A, torch.zeros(3, 11, dtype=torch.float64), 0.1)
    with pytest.raises(ValueError, match=r"x0.*\(3, 20\).*\(3, 21\)"):
        admm_lasso(A, y, 0.1, x0=torch.zeros(3, 21, dtype=torch.float64))

    operator = PixelMask(torch.ones(8, 8, dtype=torch.float64))
    image = torch.zeros(8, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match="reg.*-1"):
        admm_tv(operator, image, -1.0)
    with pytest.raises(ValueError, match=r"rho.*-2"):
        admm_tv(operator, image, 0.1, rho=-2.0)
    with pytest.raises(ValueError, match=r"\(\.\.\., 8, 8\).*\(8, 9\)"):
        admm_tv(operator, torch.zeros(8, 9, dtype=torch.float64), 0.1)
    with pytest.raises(ValueError, match="data_term.*'l3'"):
        admm_tv(operator, image, 0.1, data_term="l3")
    with pytest.raises(ValueError, match="huber_delta.*0"):
        admm_tv(operator, image, 0.1, data_term="huber", huber_delta=0.0)
    with pytest.raises(ValueError, match="box.*lower <= upper"):
        admm_tv(operator, image, 0.1, box=(1.0, 0.0))
    with pytest.raises(ValueError, match="boundary.*'reflect'"):
        admm_tv(operator, image, 0.1, boundary="reflect")
    with pytest.raises(ValueError, match="max_iter.*-5"):
        admm_tv(operator, image, 0.1, max_iter=-5)

    _, mri, mri_y = _mri_problem(8)
    with pytest.raises(ValueError, match="box constrains real images"):
        admm_tv(mri, mri_y, 0.1, box=(0.0, 1.0))
    block_cs = BlockCS(gaussian_block_matrix(0.5, block_size=4), (8, 8))
    with pytest.raises(ValueError, match="x_solver='exact'.*BlockCS"):
        admm_tv(block_cs, block_cs.forward(image), 0.1, x_solver="exact")


def test_tv_admm_rejects_mri_mask_without_zero_frequency():
    from unrolled.operators import MaskedFourier
    from unrolled.solvers.admm_imaging import admm_tv

    mask = torch.ones(16, 16, dtype=torch.float64)
    mask[0, :] = 0
    operator = MaskedFourier(mask)
    y = operator.forward(torch.rand(16, 16, dtype=torch.float64).to(torch.complex128))
    with pytest.raises(ValueError, match="does not sample the zero frequency"):
        admm_tv(operator, y, 0.01, max_iter=2)
