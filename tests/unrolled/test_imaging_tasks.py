"""Imaging tasks: measurement models, seeded splits, degradation overrides and bad input."""

from __future__ import annotations

import pytest
import torch

from unrolled.operators import BlockCS, MaskedFourier, PixelMask
from unrolled.problems.base import seeded_generator
from unrolled.problems.imaging_tasks import BlockCSTask, InpaintingTask, MRITask, build_imaging_task, psnr_crop
from unrolled.problems.mri import mri_slices
from unrolled.problems.natural_images import test_images as load_test_images

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def test_block_cs_measures_with_orthonormal_phi():
    task = BlockCSTask(cs_ratio=0.25, patch_blocks=2)
    batch = task.sample(3, seeded_generator(0))

    assert isinstance(batch.operator, BlockCS)
    assert batch.x.shape == (3, 66, 66)
    assert batch.y.shape == (3, 4, 272)
    torch.testing.assert_close(batch.y, batch.operator.forward(batch.x), rtol=0, atol=0)
    assert float(batch.x.min()) >= 0.0
    assert float(batch.x.max()) <= 1.0


def test_block_cs_test_set_is_unpadded_crops():
    task = BlockCSTask()
    test = task.fixed_set("test")
    assert test.x.shape == (8, 264, 264)
    assert test.crop is None
    torch.testing.assert_close(test.x, load_test_images(264, dtype=torch.float64))


def test_block_cs_pads_and_crops():
    task = BlockCSTask(test_size=256)
    test = task.fixed_set("test")
    assert test.x.shape == (8, 264, 264)
    assert test.crop == (256, 256)
    estimate, target = psnr_crop(test, test.x)
    assert estimate.shape == (8, 256, 256)
    assert torch.all(test.x[:, 256:, :] == 0)
    assert torch.equal(target, load_test_images(256, dtype=torch.float64))


def test_noisy_block_cs_has_requested_noise():
    task = BlockCSTask(sigma_255=25.0)
    batch = task.sample(16, seeded_generator(1))
    noise = batch.y - batch.operator.forward(batch.x)
    assert abs(float(noise.std()) - 25 / 255) < 0.03 * 25 / 255


def test_fixed_sets_regenerate_from_spec():
    task = InpaintingTask(observed_ratio=[0.2, 0.8], sigma_255=[5.0, 25.0], n_val=4)
    rebuilt = build_imaging_task(task.spec())
    first, second = task.fixed_set("val"), rebuilt.fixed_set("val")
    assert torch.equal(first.x, second.x)
    assert torch.equal(first.y, second.y)
    assert torch.equal(first.operator.mask, second.operator.mask)


def test_inpainting_zero_where_missing_and_noise_level():
    task = InpaintingTask(observed_ratio=0.5, sigma_255=15.0, test_observed_ratio=0.5, test_sigma_255=15.0)
    test = task.fixed_set("test")
    mask = test.operator.mask

    assert isinstance(test.operator, PixelMask)
    assert mask.shape == (8, 256, 256)
    assert torch.all(test.y[mask == 0] == 0)
    assert float(mask.mean()) == pytest.approx(0.5, abs=1e-6)
    noise = (test.y - test.x)[mask == 1]
    assert abs(float(noise.std()) - 15 / 255) < 0.02 * 15 / 255
    assert torch.all(test.noise_std == 15 / 255)


def test_inpainting_training_draws_ratio_per_image():
    task = InpaintingTask(observed_ratio=[0.1, 0.9], sigma_255=[5.0, 25.0])
    batch = task.sample(64, seeded_generator(2))
    ratios = batch.operator.mask.mean(dim=(-2, -1))
    assert float(ratios.min()) >= 0.1 - 1 / 4096
    assert float(ratios.max()) <= 0.9 + 1 / 4096
    assert float(ratios.std()) > 0.15
    assert float(batch.noise_std.min()) >= 5 / 255
    assert float(batch.noise_std.max()) <= 25 / 255


def test_inpainting_override_changes_only_degradation():
    task = InpaintingTask()
    default = task.fixed_set("test")
    harder = task.fixed_set("test", observed_ratio=0.1, sigma_255=25.0)
    assert torch.equal(default.x, harder.x)
    assert float(harder.operator.mask.mean()) == pytest.approx(0.1, abs=1e-4)
    assert torch.all(harder.noise_std == 25 / 255)


def test_salt_and_pepper_outliers_reach_measurements():
    task = InpaintingTask(observed_ratio=1.0, sigma_255=0.0, outlier_fraction=0.1)
    test = task.fixed_set("test")
    changed = (test.y != test.x).double().mean()
    # Outliers set a pixel to 0 or 1 and leave it unchanged where it already had that value.
    assert 0.07 < float(changed) <= 0.1 + 1e-6
    assert set(torch.unique(test.y[test.y != test.x]).tolist()) <= {0.0, 1.0}


def test_mri_uses_one_mask_and_complex_domain():
    task = MRITask(observed_ratio=0.25)
    first = task.sample(2, seeded_generator(3))
    val = task.fixed_set("val")

    assert isinstance(first.operator, MaskedFourier)
    assert first.operator.complex_domain
    assert torch.equal(first.operator.mask, val.operator.mask)
    assert first.y.dtype == torch.complex128
    assert float(first.operator.mask.mean()) == pytest.approx(0.25, abs=1 / 128)
    assert torch.all(first.y[:, first.operator.mask == 0] == 0)


def test_mri_test_set_is_held_out_slices():
    task = MRITask()
    test = task.fixed_set("test")
    assert torch.equal(test.x, mri_slices("test", dtype=torch.float64))
    train = mri_slices("train", dtype=torch.float64)
    for image in test.x:
        assert not any(torch.equal(image, other) for other in train)


def test_mri_dicom_set_has_its_own_mask_size():
    batch = MRITask().dicom_set()
    assert batch.x.shape == (1, 64, 64)
    assert batch.operator.in_shape == (64, 64)


@pytest.mark.parametrize(
    ("task", "arguments", "message"),
    [
        (InpaintingTask, {"observed_ratio": 0.0}, "observed_ratio must be > 0"),
        (InpaintingTask, {"observed_ratio": [0.6, 0.2]}, r"lo <= hi"),
        (InpaintingTask, {"sigma_255": -1.0}, "sigma_255"),
        (BlockCSTask, {"sigma_255": -1.0}, "sigma_255 must be >= 0"),
        (MRITask, {"sampling": "spiral"}, "sampling must be one of"),
    ],
)
def test_tasks_reject_bad_arguments(task, arguments, message):
    with pytest.raises(ValueError, match=message):
        task(**arguments)


def test_unknown_task_name():
    with pytest.raises(ValueError, match="unknown imaging task 'deblur'"):
        build_imaging_task({"name": "deblur"})
