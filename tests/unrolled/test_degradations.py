"""Tests of random masks, Gaussian and salt-and-pepper noise, inpainting measurements and the input checks."""

from __future__ import annotations

import math

import pytest
import torch

from unrolled.degradations import (
    add_gaussian_noise,
    add_salt_and_pepper,
    check_image_range,
    check_mask_shape,
    observe_inpainting,
    random_pixel_mask,
)
from unrolled.problems import natural_images


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_mask_exact_count_per_image():
    mask = random_pixel_mask((4, 1, 32, 48), 0.3, generator(0))

    assert mask.shape == (4, 1, 32, 48)
    assert mask.dtype == torch.float32
    assert set(mask.unique().tolist()) == {0.0, 1.0}
    # 0.3 * 1536 = 460.8 observed pixels, rounded to 461 in every image.
    assert mask.sum(dim=(-2, -1)).flatten().tolist() == [461.0] * 4
    assert not torch.equal(mask[0], mask[1])


def test_mask_count_rounds_half_to_even():
    # 0.5 * 25 = 12.5 rounds to 12, and 0.1 * 25 = 2.5 to 2 (Python's round).
    assert random_pixel_mask((5, 5), 0.5, generator(1)).sum() == 12
    assert random_pixel_mask((5, 5), 0.1, generator(1)).sum() == 2


def test_mask_full_ratio_observes_everything():
    assert torch.equal(random_pixel_mask((3, 7, 9), 1.0, generator(2)), torch.ones(3, 7, 9))


def test_mask_is_reproducible():
    first = random_pixel_mask((2, 16, 16), 0.4, generator(3), dtype=torch.float64)
    second = random_pixel_mask((2, 16, 16), 0.4, generator(3), dtype=torch.float64)
    assert first.dtype == torch.float64
    assert torch.equal(first, second)


def test_mask_pixels_observed_uniformly():
    n_masks = 2000
    masks = random_pixel_mask((n_masks, 8, 8), 0.25, generator(4))
    counts = masks.sum(0)

    # Each pixel is observed in a fraction 16/64 of the masks; its count has a standard deviation
    # below sqrt(n * p * (1 - p)) = 19.4 (sampling without replacement only lowers it).
    assert counts.sum() == n_masks * 16
    assert (counts - n_masks * 0.25).abs().max() < 5 * math.sqrt(n_masks * 0.25 * 0.75)


@pytest.mark.parametrize("ratio", [0.0, -0.1, 1.5, float("nan")])
def test_mask_rejects_ratio_outside_unit_interval(ratio):
    with pytest.raises(ValueError, match=r"observed_ratio must be in \(0, 1\]"):
        random_pixel_mask((8, 8), ratio, generator(0))


def test_mask_rejects_ratio_with_no_observed_pixel():
    with pytest.raises(ValueError, match="observes no pixel of a 8 x 8 image"):
        random_pixel_mask((8, 8), 0.001, generator(0))


def test_mask_rejects_one_dimensional_shape():
    with pytest.raises(ValueError, match=r"at least two dimensions \(\.\.\., H, W\), got shape \(64,\)"):
        random_pixel_mask((64,), 0.5, generator(0))


def test_gaussian_noise_std_within_two_percent():
    x = torch.full((512, 512), 0.5, dtype=torch.float64)
    noisy = add_gaussian_noise(x, 25.0, generator(5))
    noise = noisy - x

    assert noisy.dtype == torch.float64
    assert float(noise.std()) == pytest.approx(25 / 255, rel=0.02)
    # The mean of 262,144 draws has standard error std / 512.
    assert abs(float(noise.mean())) < 4 * (25 / 255) / 512


def test_gaussian_noise_zero_sigma_is_identity():
    x = torch.rand(3, 10, 10, generator=generator(6))
    assert torch.equal(add_gaussian_noise(x, 0.0, generator(6)), x)


def test_gaussian_noise_keeps_unobserved_entries():
    x = torch.rand(2, 32, 32, generator=generator(7))
    mask = random_pixel_mask((32, 32), 0.5, generator(8))
    masked = x * mask

    noisy = add_gaussian_noise(masked, 50.0, generator(9), mask=mask)

    missing = (mask == 0).expand_as(x)
    assert torch.equal(noisy[missing], torch.zeros(int(missing.sum())))
    assert (noisy[~missing] != masked[~missing]).all()


@pytest.mark.parametrize("sigma_255", [-1.0, float("nan"), float("inf")])
def test_gaussian_noise_rejects_invalid_sigma(sigma_255):
    with pytest.raises(ValueError, match="sigma_255 must be a finite standard deviation >= 0"):
        add_gaussian_noise(torch.zeros(4, 4), sigma_255, generator(0))


def test_gaussian_noise_rejects_8_bit_scale():
    with pytest.raises(ValueError, match=r"\[0, 255\], outside the expected range \[0.0, 1.0\]. .*divide it by 255"):
        add_gaussian_noise(torch.tensor([[0.0, 255.0]]), 10.0, generator(0))


def test_gaussian_noise_rejects_mismatched_mask():
    with pytest.raises(ValueError, match=r"mask of shape \(8, 8\) does not match image of shape \(4, 4\)"):
        add_gaussian_noise(torch.zeros(4, 4), 10.0, generator(0), mask=torch.ones(8, 8))


def test_salt_and_pepper_exact_fraction():
    x = torch.full((2, 40, 50), 0.5)
    corrupted = add_salt_and_pepper(x, 0.1, generator(10))
    changed = corrupted != x

    assert changed.sum(dim=(-2, -1)).tolist() == [200, 200]
    assert set(corrupted[changed].unique().tolist()) == {0.0, 1.0}
    # 400 fair coin flips: the number of salt pixels has standard deviation 10.
    n_salt = int((corrupted == 1.0).sum())
    assert abs(n_salt - 200) < 40


def test_salt_and_pepper_custom_levels_and_zero_fraction():
    x = torch.full((20, 20), 100.0)
    corrupted = add_salt_and_pepper(x, 0.25, generator(11), low=0.0, high=255.0)
    assert int((corrupted != x).sum()) == 100
    assert set(corrupted[corrupted != x].unique().tolist()) <= {0.0, 255.0}
    assert torch.equal(add_salt_and_pepper(x, 0.0, generator(11), low=0.0, high=255.0), x)


def test_salt_and_pepper_rejects_invalid_arguments():
    x = torch.full((8, 8), 0.5)
    with pytest.raises(ValueError, match=r"fraction must be in \[0, 1\], got 1.5"):
        add_salt_and_pepper(x, 1.5, generator(0))
    with pytest.raises(ValueError, match="low must be smaller than high"):
        add_salt_and_pepper(x, 0.1, generator(0), low=1.0, high=0.0)
    with pytest.raises(ValueError, match="outside the expected range"):
        add_salt_and_pepper(x + 1.0, 0.1, generator(0))


def test_check_image_range_message_names_values_and_fix():
    with pytest.raises(ValueError) as error:
        check_image_range(torch.tensor([3.0, 200.0]), name="target")
    message = str(error.value)
    assert "target has values in [3, 200]" in message
    assert "expected range [0.0, 1.0]" in message
    assert "divide it by 255" in message


def test_check_image_range_accepts_and_rejects():
    check_image_range(torch.tensor([0.0, 0.5, 1.0]))
    check_image_range(torch.tensor([-1.0, 1.0]), low=-1.0, high=1.0)
    check_image_range(torch.empty(0))
    with pytest.raises(ValueError, match=r"\[-0.5, 0.5\], outside") as error:
        check_image_range(torch.tensor([-0.5, 0.5]))
    assert "255" not in str(error.value)
    with pytest.raises(ValueError, match="NaN or infinite"):
        check_image_range(torch.tensor([0.5, float("nan")]))


def test_check_mask_shape_broadcast_rules():
    image = torch.zeros(3, 16, 16)
    check_mask_shape(torch.ones(3, 16, 16), image)
    check_mask_shape(torch.ones(16, 16), image)
    with pytest.raises(ValueError, match=r"mask of shape \(4, 3, 16, 16\) does not match image of shape \(3, 16, 16\)"):
        check_mask_shape(torch.ones(4, 3, 16, 16), image)
    with pytest.raises(ValueError, match=r"mask of shape \(16, 15\)"):
        check_mask_shape(torch.ones(16, 15), image)


def test_observe_inpainting_on_real_image():
    x = natural_images.load_gray_image("camera", torch.float64)[None]
    y, mask = observe_inpainting(x, 0.5, 25.0, generator(12))

    observed = mask != 0
    assert y.shape == mask.shape == x.shape
    assert y.dtype == mask.dtype == torch.float64
    assert int(observed.sum()) == 512 * 512 // 2
    assert torch.equal(y[~observed], torch.zeros(512 * 512 // 2, dtype=torch.float64))
    assert not torch.signbit(y[~observed]).any()
    assert float((y - x)[observed].std()) == pytest.approx(25 / 255, rel=0.02)


def test_observe_inpainting_draws_mask_then_noise():
    x = torch.rand(2, 24, 24, generator=generator(13), dtype=torch.float64)
    y, mask = observe_inpainting(x, 0.3, 15.0, generator(14))

    reference = generator(14)
    expected_mask = random_pixel_mask(x.shape, 0.3, reference, dtype=torch.float64)
    expected_noisy = add_gaussian_noise(x, 15.0, reference, mask=expected_mask)

    assert torch.equal(mask, expected_mask)
    assert torch.equal(y, expected_noisy * expected_mask)


def test_observe_inpainting_rejects_out_of_range_image():
    with pytest.raises(ValueError, match="divide it by 255"):
        observe_inpainting(torch.full((8, 8), 128.0), 0.5, 10.0, generator(0))
