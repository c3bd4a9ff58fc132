"""Tests of per-image PSNR and SSIM against closed forms and scikit-image, and of their mean metrics."""

from __future__ import annotations

import math

import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio as skimage_psnr
from skimage.metrics import structural_similarity as skimage_ssim

from unrolled.image_metrics import MeanPSNR, MeanSSIM, psnr, ssim
from unrolled.problems import natural_images


@pytest.fixture(scope="module")
def pairs() -> tuple[torch.Tensor, torch.Tensor]:
    """Eight 64 x 64 test-image crops (float64) and noisy estimates clipped to [0, 1]."""
    target = natural_images.test_images(64, dtype=torch.float64)
    generator = torch.Generator().manual_seed(0)
    estimate = (target + 0.05 * torch.randn(target.shape, generator=generator, dtype=torch.float64)).clamp(0, 1)
    return estimate, target


def test_psnr_closed_form(pairs):
    estimate, target = pairs
    mse = (estimate - target).square().mean(dim=(1, 2))
    expected = 10 * torch.log10(1.0 / mse)

    values = psnr(estimate, target, clip=False)

    assert values.shape == (8,)
    assert values.dtype == torch.float64
    # torchmetrics 1.9 converts with a float32 constant 10 / ln 10, about 1e-6 dB off.
    torch.testing.assert_close(values, expected, rtol=0, atol=1e-5)


def test_psnr_matches_skimage_on_255_scale(pairs):
    estimate, target = (image * 255 for image in pairs)
    expected = torch.tensor([skimage_psnr(t.numpy(), e.numpy(), data_range=255) for e, t in zip(estimate, target)], dtype=torch.float64)

    values = psnr(estimate, target, data_range=255.0)

    torch.testing.assert_close(values, expected, rtol=0, atol=1e-5)


def test_psnr_colour_images_pool_channels():
    generator = torch.Generator().manual_seed(1)
    target = torch.rand(3, 3, 20, 24, generator=generator, dtype=torch.float64)
    estimate = (target + 0.1 * torch.randn(target.shape, generator=generator, dtype=torch.float64)).clamp(0, 1)
    mse = (estimate - target).square().mean(dim=(1, 2, 3))

    values = psnr(estimate, target)

    torch.testing.assert_close(values, 10 * torch.log10(1.0 / mse), rtol=0, atol=1e-5)


def test_psnr_clip_flag():
    target = torch.full((1, 16, 16), 0.8, dtype=torch.float64)
    estimate = target + 0.5

    clipped = psnr(estimate, target, clip=True)
    raw = psnr(estimate, target, clip=False)

    # Clipping moves the estimate to 1.0, an error of 0.2 instead of 0.5.
    assert float(clipped) == pytest.approx(10 * math.log10(1 / 0.04), abs=1e-5)
    assert float(raw) == pytest.approx(10 * math.log10(1 / 0.25), abs=1e-5)


def test_psnr_identical_images_is_inf(pairs):
    _, target = pairs
    assert torch.isinf(psnr(target, target)).all()


def test_ssim_matches_skimage(pairs):
    estimate, target = pairs
    expected = torch.tensor(
        [
            skimage_ssim(e.numpy(), t.numpy(), gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0)
            for e, t in zip(estimate, target)
        ],
        dtype=torch.float64,
    )

    values = ssim(estimate, target)

    assert values.shape == (8,)
    torch.testing.assert_close(values, expected, rtol=0, atol=1e-6)


def test_ssim_colour_matches_skimage():
    target = natural_images.load_gray_image("astronaut", torch.float64)[100:164, 200:260]
    generator = torch.Generator().manual_seed(2)
    target = torch.stack([target, target.flip(0), target.flip(1)])[None]
    estimate = (target + 0.08 * torch.randn(target.shape, generator=generator, dtype=torch.float64)).clamp(0, 1)
    expected = skimage_ssim(
        estimate[0].numpy(), target[0].numpy(), channel_axis=0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0
    )

    values = ssim(estimate, target)

    assert float(values) == pytest.approx(expected, abs=1e-6)


def test_ssim_identical_images_is_one(pairs):
    _, target = pairs
    torch.testing.assert_close(ssim(target, target), torch.ones(8, dtype=torch.float64), rtol=0, atol=1e-12)


def test_batch_equals_single_images(pairs):
    estimate, target = pairs
    psnr_batch = psnr(estimate, target)
    ssim_batch = ssim(estimate, target)

    for i in range(len(target)):
        torch.testing.assert_close(psnr(estimate[i : i + 1], target[i : i + 1]), psnr_batch[i : i + 1], rtol=0, atol=1e-12)
        torch.testing.assert_close(ssim(estimate[i : i + 1], target[i : i + 1]), ssim_batch[i : i + 1], rtol=0, atol=1e-12)


def test_float32_input_measured_in_float64(pairs):
    estimate, target = pairs
    values = ssim(estimate.float(), target.float())
    assert values.dtype == torch.float64
    torch.testing.assert_close(values, ssim(estimate.float().double(), target.float().double()), rtol=0, atol=1e-12)


def test_metric_input_errors():
    image = torch.full((2, 16, 16), 0.5)
    with pytest.raises(ValueError, match=r"same shape, got \(2, 16, 16\) and \(2, 16, 15\)"):
        psnr(image, image[..., :15])
    with pytest.raises(ValueError, match=r"\(N, H, W\) or \(N, C, H, W\), got shape \(16, 16\)"):
        psnr(image[0], image[0])
    with pytest.raises(ValueError, match="divide it by 255"):
        psnr(image, image * 255)
    with pytest.raises(ValueError, match="data_range must be > 0"):
        ssim(image, image, data_range=0.0)
    with pytest.raises(ValueError, match=r"at least 11 x 11 pixels"):
        ssim(image[:, :10, :], image[:, :10, :])


def test_mean_metrics_accumulate_batches(pairs):
    estimate, target = pairs
    mean_psnr = MeanPSNR()
    mean_ssim = MeanSSIM()

    for start, stop in ((0, 3), (3, 5), (5, 8)):
        mean_psnr.update(estimate[start:stop], target[start:stop])
        mean_ssim.update(estimate[start:stop], target[start:stop])

    torch.testing.assert_close(mean_psnr.compute(), psnr(estimate, target).mean(), rtol=0, atol=1e-12)
    torch.testing.assert_close(mean_ssim.compute(), ssim(estimate, target).mean(), rtol=0, atol=1e-12)
    assert MeanPSNR.higher_is_better
    assert MeanSSIM.higher_is_better


def test_mean_metric_clip_flag_is_passed():
    target = torch.full((1, 16, 16), 0.8, dtype=torch.float64)
    metric = MeanPSNR(clip=False)
    metric.update(target + 0.5, target)
    assert float(metric.compute()) == pytest.approx(10 * math.log10(1 / 0.25), abs=1e-5)


@pytest.mark.filterwarnings("ignore:The ``compute`` method of metric MeanSSIM was called before")
def test_mean_metric_compute_before_update_raises():
    with pytest.raises(RuntimeError, match="before any update"):
        MeanSSIM().compute()
