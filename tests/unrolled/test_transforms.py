"""Orthonormal DCT and wavelet transforms: values against scipy and PyWavelets, orthonormality, gradients, argument checks."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import pywt
import scipy.fft
import torch
from torch.autograd import gradcheck

from unrolled.transforms import DCT2, Wavelet2D, dct_matrix, dwt_matrix

pytestmark = pytest.mark.usefixtures("single_torch_thread")

# (wavelet, levels, image shape): filters shorter and longer than the coarsest block.
WAVELET_CASES = [
    ("haar", 3, (2, 16, 24)),
    ("db2", 2, (3, 12, 8)),
    ("db4", 3, (2, 32, 16)),
    ("db4", 3, (1, 8, 8)),
    ("sym4", 2, (2, 16, 16)),
    ("sym5", 1, (2, 10, 6)),
    ("coif1", 2, (1, 8, 12)),
]


def _random(shape: tuple[int, ...], dtype: torch.dtype = torch.float64, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator, dtype=dtype)


def _pywt_forward(x: np.ndarray, wavelet: str, levels: int) -> np.ndarray:
    """Packed ``pywt.wavedec2`` coefficients of each image of a (batch, H, W) array."""
    with warnings.catch_warnings():
        # PyWavelets warns when a filter is longer than the coarsest block; periodization is still exact.
        warnings.simplefilter("ignore", UserWarning)
        return np.stack([pywt.coeffs_to_array(pywt.wavedec2(image, wavelet, mode="periodization", level=levels))[0] for image in x])


def _pywt_inverse(coefficients: np.ndarray, wavelet: str, levels: int) -> np.ndarray:
    """``pywt.waverec2`` of each packed (H, W) coefficient array of a batch."""
    # coeffs_to_array of a zero image of the same shape gives the slices that unpack each array.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        _, slices = pywt.coeffs_to_array(pywt.wavedec2(np.zeros(coefficients.shape[1:]), wavelet, mode="periodization", level=levels))
        images = []
        for array in coefficients:
            coeffs = pywt.array_to_coeffs(array, slices, output_format="wavedec2")
            images.append(pywt.waverec2(coeffs, wavelet, mode="periodization"))
    return np.stack(images)


def _explicit_matrix(transform, height: int, width: int) -> torch.Tensor:
    """The (HW, HW) matrix of ``transform.forward`` on row-major flattened images, one basis image per column."""
    basis = torch.eye(height * width, dtype=torch.float64).reshape(height * width, height, width)
    return transform.forward(basis).reshape(height * width, height * width).T


# ---------------------------------------------------------------- DCT2


@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (2, 8, 8), (2, 3, 7, 4)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
def test_dct_matches_scipy(shape, dtype):
    x = _random(shape, dtype, seed=1)
    transform = DCT2()

    coefficients = transform.forward(x)
    image = transform.inverse(x)

    assert np.abs(coefficients.numpy() - scipy.fft.dctn(x.numpy(), axes=(-2, -1), norm="ortho")).max() < 1e-12
    assert np.abs(image.numpy() - scipy.fft.idctn(x.numpy(), axes=(-2, -1), norm="ortho")).max() < 1e-12
    assert torch.equal(transform(x), coefficients)


def test_dct_matrix_orthogonal():
    for n in (1, 2, 5, 16):
        matrix = dct_matrix(n)
        assert torch.allclose(matrix @ matrix.T, torch.eye(n, dtype=torch.float64), rtol=0, atol=1e-14)


def test_dct_explicit_matrix_orthogonal():
    matrix = _explicit_matrix(DCT2(), 4, 6)

    assert torch.allclose(matrix.T @ matrix, torch.eye(24, dtype=torch.float64), rtol=0, atol=1e-13)


def test_dct_float32_close_to_float64():
    x = _random((2, 16, 12), seed=2)
    transform = DCT2()

    single = transform.forward(x.float())

    assert single.dtype == torch.float32
    assert (single.double() - transform.forward(x)).abs().max() < 1e-5


# ---------------------------------------------------------------- Wavelet2D


@pytest.mark.parametrize(("wavelet", "levels", "shape"), WAVELET_CASES)
def test_wavelet_matches_pywt(wavelet, levels, shape):
    x = _random(shape, seed=3)
    transform = Wavelet2D(wavelet, levels)

    coefficients = transform.forward(x)
    image = transform.inverse(x)

    assert np.abs(coefficients.numpy() - _pywt_forward(x.numpy(), wavelet, levels)).max() < 1e-12
    assert np.abs(image.numpy() - _pywt_inverse(x.numpy(), wavelet, levels)).max() < 1e-12


def test_dwt_matrix_matches_pywt_single_level():
    for wavelet, n in [("haar", 6), ("db3", 12), ("sym6", 4), ("coif2", 24)]:
        matrix = dwt_matrix(wavelet, n)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            reference = np.stack([np.concatenate(pywt.dwt(unit, wavelet, mode="periodization")) for unit in np.eye(n)], axis=1)
        assert np.abs(matrix.numpy() - reference).max() < 1e-14


@pytest.mark.parametrize(("wavelet", "levels", "shape"), WAVELET_CASES)
def test_wavelet_roundtrip_and_norm(wavelet, levels, shape):
    x = _random(shape, seed=4)
    transform = Wavelet2D(wavelet, levels)

    coefficients = transform.forward(x)

    assert (transform.inverse(coefficients) - x).abs().max() < 1e-10
    assert (torch.linalg.vector_norm(coefficients, dim=(-2, -1)) - torch.linalg.vector_norm(x, dim=(-2, -1))).abs().max() < 1e-10


@pytest.mark.parametrize(("wavelet", "levels"), [("haar", 2), ("db2", 2), ("sym4", 3)])
def test_wavelet_explicit_matrix_orthogonal(wavelet, levels):
    matrix = _explicit_matrix(Wavelet2D(wavelet, levels), 8, 8)

    assert torch.allclose(matrix.T @ matrix, torch.eye(64, dtype=torch.float64), rtol=0, atol=1e-10)


def test_wavelet_complex_is_real_and_imaginary_parts():
    x = _random((2, 16, 16), torch.complex128, seed=5)
    transform = Wavelet2D("db3", 2)

    coefficients = transform.forward(x)

    assert torch.allclose(coefficients, transform.forward(x.real) + 1j * transform.forward(x.imag), rtol=0, atol=1e-14)
    assert (transform.inverse(coefficients) - x).abs().max() < 1e-10


def test_wavelet_float32_close_to_float64():
    x = _random((2, 32, 32), seed=6)
    transform = Wavelet2D("db4", 3)

    single = transform.forward(x.float())

    assert single.dtype == torch.float32
    assert (single.double() - transform.forward(x)).abs().max() < 1e-5


# ---------------------------------------------------------------- gradients and errors


@pytest.mark.parametrize("transform", [DCT2(), Wavelet2D("db2", 2)], ids=["dct", "wavelet"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
def test_transform_gradcheck(transform, dtype):
    x = _random((2, 8, 4), dtype, seed=7).requires_grad_(True)

    assert gradcheck(transform.forward, (x,))
    assert gradcheck(transform.inverse, (x,))


def test_wavelet_bad_arguments():
    with pytest.raises(ValueError, match=r"levels=3.*\(2, 12, 16\)"):
        Wavelet2D("haar", 3).forward(torch.zeros(2, 12, 16))
    with pytest.raises(ValueError, match=r"\(20, 8\)"):
        Wavelet2D("haar", 3).inverse(torch.zeros(20, 8))
    with pytest.raises(ValueError, match="levels must be an integer >= 1, got 0"):
        Wavelet2D("haar", 0)
    with pytest.raises(ValueError, match="'bior2.2'.*not an exactly orthonormal"):
        Wavelet2D("bior2.2", 2)
    with pytest.raises(ValueError, match="'dmey'"):
        Wavelet2D("dmey", 1)
    with pytest.raises(ValueError, match="'not_a_wavelet'"):
        Wavelet2D("not_a_wavelet", 1)
    with pytest.raises(ValueError, match=r"\(7,\)"):
        DCT2().forward(torch.zeros(7))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("transform", [DCT2(), Wavelet2D("db4", 3)], ids=["dct", "wavelet"])
def test_transform_cuda_matches_cpu(transform):
    x = _random((4, 64, 32), seed=8).float()

    on_device = transform.forward(x.cuda())

    assert on_device.device.type == "cuda"
    assert (on_device.cpu() - transform.forward(x)).abs().max() < 1e-4
    assert (transform.inverse(on_device).cpu() - x).abs().max() < 1e-4
