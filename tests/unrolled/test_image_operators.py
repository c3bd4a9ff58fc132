"""Image operators: adjoint dot tests, masks with small weights, block CS, undersampled Fourier."""

from __future__ import annotations

import math

import pytest
import torch

from unrolled.operators import (
    BlockCS,
    MaskedFourier,
    MatrixOperator,
    PixelMask,
    cartesian_mask,
    crop_to_shape,
    gaussian_block_matrix,
    gaussian_matrix,
    pad_to_block_multiple,
    random_mask,
)

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def _random(shape, generator, complex_values):
    values = torch.randn(shape, generator=generator, dtype=torch.float64)
    if complex_values:
        values = torch.complex(values, torch.randn(shape, generator=generator, dtype=torch.float64))
    return values


def _operators(complex_values):
    generator = torch.Generator().manual_seed(0)
    mask = (torch.rand(12, 10, generator=generator) < 0.6).double()
    operators = {
        "pixel_mask": PixelMask(mask),
        "pixel_mask_weighted": PixelMask(torch.rand(12, 10, generator=generator, dtype=torch.float64)),
        "block_cs": BlockCS(gaussian_block_matrix(0.25, block_size=4, seed=1), (12, 8)),
        "block_cs_33": BlockCS(gaussian_block_matrix(0.1, seed=2), (66, 33)),
        "fourier_cartesian": MaskedFourier(cartesian_mask((12, 10), 0.3, generator).double()),
        "fourier_random": MaskedFourier(random_mask((12, 10), 0.3, generator).double()),
        "matrix": MatrixOperator(gaussian_matrix(30, 48, seed=3), (6, 8)),
    }
    if complex_values:
        complex_matrix = torch.complex(gaussian_matrix(30, 48, seed=4), gaussian_matrix(30, 48, seed=5))
        operators["matrix"] = MatrixOperator(complex_matrix, (6, 8))
    else:
        operators["fourier_real_domain"] = MaskedFourier(cartesian_mask((12, 10), 0.3, generator).double(), domain="real")
    return operators


@pytest.mark.parametrize("complex_values", [False, True], ids=["real", "complex"])
def test_adjoint_dot_identity(complex_values):
    generator = torch.Generator().manual_seed(10)
    for name, operator in _operators(complex_values).items():
        x_is_complex = complex_values or operator.complex_domain
        x = _random((3, *operator.in_shape), generator, x_is_complex)
        y_is_complex = x_is_complex or isinstance(operator, MaskedFourier)
        y = _random((3, *operator.out_shape), generator, y_is_complex)

        forward = operator.forward(x)
        back = operator.adjoint(y)
        # <Ax, y> = sum Ax * conj(y); in the real domain of a complex-valued operator, the real part.
        left = (forward * y.conj()).sum()
        right = (x * back.conj()).sum()
        if not x_is_complex:
            left, right = left.real, right.real
        assert back.shape == x.shape, name
        assert abs(complex(left) - complex(right)) <= 1e-10 * max(1.0, abs(complex(left))), name


@pytest.mark.parametrize("complex_values", [False, True], ids=["real", "complex"])
def test_normal_matches_adjoint_of_forward(complex_values):
    generator = torch.Generator().manual_seed(11)
    for name, operator in _operators(complex_values).items():
        x = _random((2, *operator.in_shape), generator, complex_values or operator.complex_domain)
        torch.testing.assert_close(operator.normal(x), operator.adjoint(operator.forward(x)), rtol=1e-12, atol=1e-12, msg=name)


def test_lipschitz_constants_match_power_iteration():
    for name, operator in _operators(False).items():
        exact = operator.lipschitz_constant()
        estimate = super(type(operator), operator).lipschitz_constant(max_iter=3000, tol=1e-13, margin=1.0)
        assert exact >= estimate * (1 - 1e-6), name
        assert exact <= estimate * 1.0101, name


def test_pseudo_inverse_with_small_weights():
    generator = torch.Generator().manual_seed(1)
    image = torch.rand(16, 16, generator=generator, dtype=torch.float64)
    mask = torch.where(torch.rand(16, 16, generator=generator) < 0.5, 0.001, 0.0).double()
    mask[0, 0] = 0.001
    operator = PixelMask(mask)

    recovered = operator.pseudo_inverse(operator.forward(image))

    observed = mask != 0
    assert torch.equal(recovered[observed], image[observed]) or torch.allclose(
        recovered[observed], image[observed], rtol=1e-15, atol=0
    )
    assert torch.all(recovered[~observed] == 0)
    assert torch.isfinite(recovered).all()


def test_binary_mask_noise_stays_zero_where_missing():
    generator = torch.Generator().manual_seed(2)
    image = torch.rand(4, 32, 32, generator=generator, dtype=torch.float64)
    mask = (torch.rand(32, 32, generator=generator) < 0.5).double()
    operator = PixelMask(mask)

    y = operator.add_noise(operator.forward(image), 15 / 255, generator)

    assert torch.all(y[:, mask == 0] == 0)
    noise = y[:, mask == 1] - image[:, mask == 1]
    assert abs(float(noise.std()) - 15 / 255) < 0.05 * 15 / 255


def test_complex_noise_has_requested_power():
    generator = torch.Generator().manual_seed(3)
    operator = MaskedFourier(cartesian_mask((64, 64), 0.5, generator).double())
    y = operator.add_noise(torch.zeros(8, 64, 64, dtype=torch.complex128), 0.1, generator)
    sampled = y[:, operator.observed]
    assert abs(float(sampled.abs().square().mean()) - 0.01) < 0.03 * 0.01
    assert torch.all(y[:, ~operator.observed] == 0)


def test_mask_shape_mismatch_names_both_shapes():
    operator = PixelMask(torch.ones(8, 8))
    with pytest.raises(ValueError, match=r"\(2, 8, 9\).*\(8, 8\)"):
        operator.forward(torch.zeros(2, 8, 9))


def test_block_cs_rejects_size_not_multiple_of_block():
    phi = gaussian_block_matrix(0.25)
    with pytest.raises(ValueError, match=r"\(100, 99\).*33.*pad_to_block_multiple"):
        BlockCS(phi, (100, 99))


def test_block_cs_padding_round_trip():
    image = torch.rand(2, 100, 70, dtype=torch.float64)
    padded = pad_to_block_multiple(image)
    assert padded.shape == (2, 132, 99)
    assert torch.all(padded[:, 100:] == 0)
    assert torch.equal(crop_to_shape(padded, (100, 70)), image)


def test_block_cs_measures_each_block_with_phi():
    phi = gaussian_block_matrix(0.25, block_size=4, seed=0)
    operator = BlockCS(phi, (8, 12))
    image = torch.arange(96, dtype=torch.float64).reshape(8, 12)

    y = operator.forward(image)

    assert y.shape == (6, 4)
    # Block (row 1, column 2) covers rows 4..7 and columns 8..11; it is the sixth in row-major order.
    block = image[4:8, 8:12].reshape(-1)
    torch.testing.assert_close(y[5], phi @ block)
    torch.testing.assert_close(operator.from_blocks(operator.to_blocks(image)), image)


def test_block_matrix_has_orthonormal_rows():
    phi = gaussian_block_matrix(0.25)
    assert phi.shape == (272, 1089)
    torch.testing.assert_close(phi @ phi.T, torch.eye(272, dtype=torch.float64), atol=1e-12, rtol=0)


def test_fourier_solve_normal_is_exact():
    generator = torch.Generator().manual_seed(4)
    operator = MaskedFourier(cartesian_mask((16, 12), 0.3, generator).double())
    spectrum = torch.rand(16, 12, generator=generator, dtype=torch.float64) + 0.1
    rhs = _random((2, 16, 12), generator, True)

    x = operator.solve_normal(rhs, 0.7, spectrum)

    # Apply (A^H A + rho K^H K) with K^H K = F^H diag(spectrum) F.
    regulariser = torch.fft.ifft2(spectrum * torch.fft.fft2(x, norm="ortho"), norm="ortho")
    torch.testing.assert_close(operator.normal(x) + 0.7 * regulariser, rhs, atol=1e-12, rtol=0)


@pytest.mark.parametrize("make_mask", [cartesian_mask, random_mask])
def test_sampling_masks_hit_requested_ratio(make_mask):
    generator = torch.Generator().manual_seed(5)
    mask = make_mask((128, 96), 0.25, generator)
    assert abs(float(mask.mean()) - 0.25) <= 1 / 128
    # Zero frequency always sampled.
    assert mask[0, 0] == 1
    assert set(mask.unique().tolist()) == {0.0, 1.0}


def test_cartesian_mask_samples_whole_rows_with_full_centre():
    generator = torch.Generator().manual_seed(6)
    mask = cartesian_mask((128, 96), 0.2, generator, center_fraction=0.08)
    rows = mask[:, 0]
    assert torch.equal(mask, rows[:, None].expand(128, 96))
    assert int(rows.sum()) == round(0.2 * 128)
    centred = torch.fft.fftshift(rows)
    n_center = math.ceil(0.08 * 128)
    assert torch.all(centred[64 - n_center // 2 : 64 - n_center // 2 + n_center] == 1)


def test_sampling_rejects_invalid_ratio():
    generator = torch.Generator().manual_seed(7)
    with pytest.raises(ValueError, match="observed_ratio must lie in"):
        cartesian_mask((8, 8), 1.5, generator)
    with pytest.raises(ValueError, match="center_fraction"):
        random_mask((8, 8), 0.1, generator, center_fraction=0.5)


def test_real_domain_fourier_rejects_exact_solve():
    operator = MaskedFourier(torch.ones(4, 4), domain="real")
    with pytest.raises(ValueError, match="domain='complex'"):
        operator.solve_normal(torch.zeros(4, 4), 1.0)


def test_masks_require_sampled_centre():
    generator = torch.Generator().manual_seed(8)
    with pytest.raises(ValueError, match="zero frequency must be sampled"):
        cartesian_mask((16, 16), 0.25, generator, center_fraction=0.0)


def test_solve_normal_rejects_unsampled_zero_frequency():
    mask = torch.ones(8, 8, dtype=torch.float64)
    mask[0, :] = 0
    operator = MaskedFourier(mask)
    spectrum = torch.rand(8, 8, dtype=torch.float64)
    spectrum[0, 0] = 0
    with pytest.raises(ValueError, match="does not sample the zero frequency"):
        operator.solve_normal(torch.zeros(8, 8, dtype=torch.complex128), 1.0, spectrum)


def test_per_image_masks_reject_other_batch():
    operator = PixelMask(torch.ones(3, 8, 8))
    with pytest.raises(ValueError, match=r"\(2, 8, 8\).*per-image masks"):
        operator.forward(torch.zeros(2, 8, 8))
    with pytest.raises(ValueError, match="per-image masks"):
        operator.forward(torch.zeros(8, 8))


def test_fourier_rejects_nan_mask():
    mask = torch.ones(4, 4)
    mask[1, 1] = math.nan
    with pytest.raises(ValueError, match="NaN or Inf"):
        MaskedFourier(mask)
