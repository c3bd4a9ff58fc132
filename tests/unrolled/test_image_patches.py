"""Tests of the natural-image patch problem: DCT basis, operator, image splits, seeding, noise, recovery."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.fft
import torch
from numpy.lib.stride_tricks import sliding_window_view

from unrolled.metrics import psnr_db
from unrolled.problems import PROBLEMS, ImagePatchCS, build_problem, seeded_generator
from unrolled.problems.image_patches import (
    DEFAULT_TEST_IMAGES,
    DEFAULT_TRAIN_IMAGES,
    DEFAULT_VAL_IMAGES,
    IMAGE_SOURCES,
    dct2_basis,
    load_gray_image,
)
from unrolled.solvers import fista

# reg of the FISTA recovery checks: the best value of the grid 1e-4, 3e-4, 1e-3, ..., 3e-2 for PSNR on
# the default validation set after 1,000 iterations (36.71 dB; 36.69 dB at 1e-3, 33.48 dB at 1e-4).
FISTA_REG = 3e-4


@pytest.fixture(scope="module")
def problem() -> ImagePatchCS:
    return ImagePatchCS()


@pytest.fixture
def one_thread():
    """Run the test on one intra-op thread, then restore the previous count.

    The FISTA products are small (batch x 256 x 128), so a second thread gains little, and on busy
    cores it costs a lot: 1,000 iterations on 200 patches measured 2.3 s on one thread and 52 s on
    two, on 2 cores shared with other jobs.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def least_norm_psnr(problem: ImagePatchCS, y: torch.Tensor, x: torch.Tensor) -> float:
    """PSNR of the minimum-norm solution of A x = y, the linear baseline without a sparsity prior."""
    x_least_norm = torch.linalg.pinv(problem.A) @ y.T
    return float(psnr_db(problem.signal(x_least_norm.T), problem.signal(x)))


def fista_psnr(problem: ImagePatchCS, y: torch.Tensor, x: torch.Tensor, max_iter: int) -> float:
    x_hat = fista(problem.A, y, FISTA_REG, max_iter=max_iter).x
    return float(psnr_db(problem.signal(x_hat), problem.signal(x)))


# --- DCT basis and operator ---------------------------------------------------------------------------


@pytest.mark.parametrize("patch_size", [1, 8, 16])
def test_dct_basis_orthonormal(patch_size):
    D = dct2_basis(patch_size)
    identity = torch.eye(patch_size**2, dtype=torch.float64)
    assert D.dtype == torch.float64
    assert torch.allclose(D.T @ D, identity, rtol=0, atol=1e-12)
    assert torch.allclose(D @ D.T, identity, rtol=0, atol=1e-12)


@pytest.mark.parametrize("patch_size", [8, 16])
def test_dct_basis_matches_scipy_dctn(patch_size):
    problem = ImagePatchCS(patch_size=patch_size, m=patch_size**2 // 2)
    patches = problem.sample_patches(5, seeded_generator(0))

    for p in patches:
        expected = scipy.fft.dctn(p.reshape(patch_size, patch_size).numpy(), norm="ortho").ravel()
        np.testing.assert_allclose((problem.D.T @ p).numpy(), expected, rtol=0, atol=1e-12)


def test_dct_first_atom_is_constant(problem):
    assert torch.allclose(problem.D[:, 0], torch.full((256,), 1 / 16, dtype=torch.float64), rtol=0, atol=1e-15)


def test_operator_is_phi_times_dct(problem):
    assert problem.A.shape == (128, 256)
    assert problem.A.dtype == torch.float64
    assert torch.equal(problem.A, problem.Phi @ problem.D)


def test_phi_entries_have_variance_one_over_m(problem):
    # With 128 · 256 entries the standard errors are 1/sqrt(entries · m) for the mean and about 0.8 %
    # for the variance, so the bounds are 3 and 2.5 standard errors; the operator seed fixes the outcome.
    assert abs(float(problem.Phi.mean())) < 3 / math.sqrt(problem.Phi.numel() * problem.m)
    assert float(problem.Phi.var()) * problem.m == pytest.approx(1.0, rel=0.02)


def test_measurements_are_phi_times_patch(problem):
    generator = seeded_generator(7)
    patches = problem.sample_patches(50, generator)
    y, x = problem.sample(50, seeded_generator(7))

    torch.testing.assert_close(x, patches @ problem.D, rtol=0, atol=1e-12)
    torch.testing.assert_close(y, patches @ problem.Phi.T, rtol=0, atol=1e-12)
    torch.testing.assert_close(y, x @ problem.A.T, rtol=0, atol=0)


def test_signal_recovers_patch(problem):
    patches = problem.sample_patches(50, seeded_generator(3), "val")
    _, x = problem.sample(50, seeded_generator(3), "val")

    assert x.shape == (50, 256)
    assert x.dtype == torch.float64
    torch.testing.assert_close(problem.signal(x), patches, rtol=0, atol=1e-12)


def test_signal_keeps_dtype_and_batch_shape(problem):
    x = torch.randn(2, 3, 256, dtype=torch.float32)

    p = problem.signal(x)

    assert p.dtype == torch.float32
    assert p.shape == (2, 3, 256)


# --- images and splits --------------------------------------------------------------------------------


def test_default_image_lists_disjoint():
    train, val, test = set(DEFAULT_TRAIN_IMAGES), set(DEFAULT_VAL_IMAGES), set(DEFAULT_TEST_IMAGES)
    assert not train & val
    assert not train & test
    assert not val & test
    assert len(test) >= 4
    assert train | val | test <= set(IMAGE_SOURCES)


def test_problem_stores_image_lists(problem):
    assert problem.images == {"train": DEFAULT_TRAIN_IMAGES, "val": DEFAULT_VAL_IMAGES, "test": DEFAULT_TEST_IMAGES}


def test_unknown_image_rejected():
    with pytest.raises(ValueError, match=r"unknown image 'lena' in test_images; expected one of: astronaut, brick,"):
        ImagePatchCS(test_images=("china", "lena"))


def test_overlapping_splits_rejected():
    with pytest.raises(ValueError, match=r"train_images and test_images share \['camera'\]"):
        ImagePatchCS(test_images=("camera", "china"))
    with pytest.raises(ValueError, match=r"val_images and test_images share \['moon'\]"):
        ImagePatchCS(test_images=("moon",))


def test_malformed_image_lists_rejected():
    with pytest.raises(ValueError, match="more than once"):
        ImagePatchCS(val_images=("moon", "moon"))
    with pytest.raises(ValueError, match="at least one image"):
        ImagePatchCS(val_images=())
    with pytest.raises(TypeError, match="got the string 'moon'"):
        ImagePatchCS(val_images="moon")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"m": 0}, "m must be >= 1"),
        ({"patch_size": 0}, "patch_size must be >= 1"),
        ({"patch_size": 200}, "patch_size=200 exceeds the smaller side of image 'text'"),
        ({"snr_db": float("inf")}, "snr_db must be a finite number"),
        ({"n_test": 0}, "n_val and n_test must be >= 1"),
    ],
)
def test_invalid_arguments_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ImagePatchCS(**kwargs)


def test_invalid_split_rejected(problem):
    with pytest.raises(ValueError, match="split must be one of"):
        problem.sample(4, seeded_generator(0), "validation")


def test_every_listed_image_loads_offline():
    for name in IMAGE_SOURCES:
        image = load_gray_image(name)
        assert image.ndim == 2, name
        assert image.dtype == np.float64, name
        assert min(image.shape) >= 16, name
        assert image.min() >= 0.0, name
        assert image.max() <= 1.0, name


def test_gray_images_cached_and_read_only():
    first = load_gray_image("camera")
    assert load_gray_image("camera") is first
    assert not first.flags.writeable


def test_gray_conversion_matches_skimage():
    import skimage.color
    import skimage.data

    expected = skimage.color.rgb2gray(skimage.data.astronaut())
    np.testing.assert_allclose(load_gray_image("astronaut"), expected, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(load_gray_image("camera"), skimage.data.camera() / 255.0)


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_patch_values_in_unit_interval(problem, split):
    patches = problem.sample_patches(500, seeded_generator(11), split)
    _, x = problem.sample(500, seeded_generator(11), split)

    assert patches.shape == (500, 256)
    assert patches.min() >= 0.0
    assert patches.max() <= 1.0
    assert problem.signal(x).min() >= -1e-12
    assert problem.signal(x).max() <= 1.0 + 1e-12
    assert problem.signal_range == 1.0


def test_patches_are_windows_of_split_images():
    problem = ImagePatchCS(patch_size=8, m=32, test_images=("coins", "clock"))
    patches = problem.sample_patches(6, seeded_generator(5), "test")
    windows = {name: sliding_window_view(load_gray_image(name), (8, 8)).reshape(-1, 64) for name in ("coins", "clock")}

    for patch in patches.numpy():
        matches = {name: bool((all_windows == patch).all(axis=1).any()) for name, all_windows in windows.items()}
        assert any(matches.values()), "patch is no window of the test images"


def test_patches_drawn_from_every_image():
    # 'moon' has 259,062 windows of 4 x 4 pixels that are not all black and 'text' (172 x 448) has
    # 75,205, so about 22.5 %, or 90 of 400 patches, should come from 'text'.
    problem = ImagePatchCS(patch_size=4, m=8, val_images=("moon", "text"))
    patches = problem.sample_patches(400, seeded_generator(9), "val").numpy()
    text_windows = sliding_window_view(load_gray_image("text"), (4, 4)).reshape(-1, 16)

    from_text = sum(bool((text_windows == patch).all(axis=1).any()) for patch in patches)

    assert 60 <= from_text <= 120


def test_all_black_windows_never_sampled():
    # astronaut has a black border: 10,668 of its 497 x 497 windows of 16 x 16 pixels are all 0.
    problem = ImagePatchCS(train_images=("astronaut",))
    pool = problem._pools["train"]

    patches = problem.sample_patches(20000, seeded_generator(6))

    assert int(pool.windows_end[-1]) == 497 * 497 - 10668
    assert bool((patches.amax(dim=-1) > 0).all())


# --- seeding and reproducibility ----------------------------------------------------------------------


def test_same_seeds_give_identical_data(problem):
    other = ImagePatchCS()

    assert torch.equal(other.A, problem.A)
    for split in ("val", "test"):
        for tensor, other_tensor in zip(problem.fixed_set(split), other.fixed_set(split)):
            assert torch.equal(tensor, other_tensor)
    for tensor, other_tensor in zip(problem.sample(64, seeded_generator(1, 0, 5)), other.sample(64, seeded_generator(1, 0, 5))):
        assert torch.equal(tensor, other_tensor)


def test_different_seeds_give_different_data(problem):
    other = ImagePatchCS(operator_seed=10, test_seed=30)

    assert not torch.equal(other.A, problem.A)
    assert not torch.equal(other.fixed_set("test")[1], problem.fixed_set("test")[1])
    assert torch.equal(other.fixed_set("val")[1], problem.fixed_set("val")[1])


def test_fixed_sets_have_configured_sizes(problem):
    y, x = problem.fixed_set("test")
    assert y.shape == (1000, 128)
    assert x.shape == (1000, 256)
    assert y.dtype == x.dtype == torch.float64
    assert problem.fixed_set("val")[0].shape == (1000, 128)


def test_spec_rebuild_regenerates_test_set(problem):
    spec = json.loads(json.dumps(problem.spec()))

    rebuilt = build_problem(spec)

    assert isinstance(rebuilt, ImagePatchCS)
    assert rebuilt.spec() == problem.spec()
    assert torch.equal(rebuilt.A, problem.A)
    for tensor, rebuilt_tensor in zip(problem.fixed_set("test"), rebuilt.fixed_set("test")):
        assert torch.equal(tensor, rebuilt_tensor)


def test_registered_in_problem_registry():
    assert PROBLEMS["image_patches"] is ImagePatchCS
    assert isinstance(build_problem({"name": "image_patches", "m": 64}), ImagePatchCS)


def test_train_loader_yields_fresh_float32_batches(problem):
    loader = problem.train_loader(batch_size=8, steps_per_epoch=2)

    (y0, x0), (y1, x1) = list(loader)

    assert y0.shape == (8, 128)
    assert x0.shape == (8, 256)
    assert y0.dtype == x0.dtype == torch.float32
    assert not torch.equal(x0, x1)


# --- noise --------------------------------------------------------------------------------------------


def test_snr_convention_per_sample():
    noiseless = ImagePatchCS()
    noisy = ImagePatchCS(snr_db=20.0)

    y_clean, x_clean = noiseless.sample(2000, seeded_generator(4))
    y_noisy, x_noisy = noisy.sample(2000, seeded_generator(4))
    noise = y_noisy - y_clean
    signal_energy = y_clean.square().sum(-1)
    noise_energy = noise.square().sum(-1)

    assert torch.equal(x_noisy, x_clean)
    # An all-black patch has Phi p = 0, so its noise standard deviation is 0 as well.
    assert torch.equal(noise_energy == 0, signal_energy == 0)

    # Per sample, ||w_i||^2 / ||Phi p_i||^2 follows 10^(-s/10) · chi2(m) / m, whose mean is 10^(-s/10).
    ratio = noise_energy[signal_energy > 0] / signal_energy[signal_energy > 0]
    assert float(ratio.mean()) == pytest.approx(0.01, rel=0.02)
    assert float(ratio.std()) == pytest.approx(0.01 * math.sqrt(2 / 128), rel=0.1)
    assert 10 * math.log10(float(signal_energy.sum() / noise_energy.sum())) == pytest.approx(20.0, abs=0.1)


# --- recovery with FISTA ------------------------------------------------------------------------------


def test_fista_beats_least_norm_baseline(problem, one_thread):
    y, x = problem.fixed_set("test")
    y, x = y[:200], x[:200]

    baseline = least_norm_psnr(problem, y, x)
    recovered = fista_psnr(problem, y, x, max_iter=1000)

    assert baseline < 10.0
    assert recovered > 22.0
    assert recovered > baseline + 12.0


@pytest.mark.slow
def test_fista_psnr_on_full_test_set(problem, one_thread):
    y, x = problem.fixed_set("test")

    # Measured values in float64 (2 CPU cores, torch 2.14); the fixed seeds make them reproducible.
    assert least_norm_psnr(problem, y, x) == pytest.approx(8.61, abs=0.05)
    assert fista_psnr(problem, y, x, max_iter=16) == pytest.approx(8.63, abs=0.05)
    assert fista_psnr(problem, y, x, max_iter=1000) == pytest.approx(25.76, abs=0.05)
