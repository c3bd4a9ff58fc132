"""Tests of the MRI data shipped in nibabel and pydicom: split, normalisation, empty-slice rule and offline access."""

from __future__ import annotations

from pathlib import Path

import nibabel
import numpy as np
import pydicom
import pytest
import torch
from pydicom.data import get_testdata_file

from unrolled.problems.mri import (
    MRI_TEST_SLICES,
    dicom_mr_image,
    is_nearly_empty,
    mri_slice_ids,
    mri_slices,
    nifti_path,
    normalise_by_max,
)


@pytest.fixture(scope="module")
def volume() -> np.ndarray:
    return np.asarray(nibabel.load(nifti_path()).dataobj)


def test_files_ship_inside_packages(volume):
    assert nifti_path().is_file()
    assert Path(nibabel.__file__).parent in nifti_path().parents
    assert volume.shape == (128, 96, 24, 2)
    assert volume.dtype == np.int16
    assert Path(pydicom.__file__).parent in Path(get_testdata_file("MR_small.dcm")).parents


def test_split_shapes_and_range():
    for split, count in (("train", 36), ("test", 12)):
        images = mri_slices(split)
        assert images.shape == (count, 128, 96), split
        assert images.dtype == torch.float32
        assert float(images.min()) >= 0.0
        # Each slice is divided by its own maximum, so every maximum is exactly 1.
        assert torch.equal(images.amax(dim=(1, 2)), torch.ones(count))


def test_split_slice_indices_disjoint():
    train = mri_slice_ids("train")
    test = mri_slice_ids("test")
    train_slices = {z for z, _ in train}
    test_slices = {z for z, _ in test}

    assert test_slices == set(MRI_TEST_SLICES) == set(range(9, 15))
    assert not train_slices & test_slices
    assert train_slices | test_slices == set(range(24))
    # Both time points of every slice index stay in the same split.
    assert sorted(test) == [(z, t) for z in MRI_TEST_SLICES for t in (0, 1)]
    assert sorted(train) == train
    assert len(train) == 2 * len(train_slices)


def test_slices_equal_volume_divided_by_max(volume):
    for split in ("train", "test"):
        images = mri_slices(split, dtype=torch.float64)
        for image, (z, t) in zip(images, mri_slice_ids(split)):
            expected = volume[:, :, z, t].astype(np.float64) / volume[:, :, z, t].max()
            np.testing.assert_array_equal(image.numpy(), expected)


def test_no_slice_of_the_file_is_nearly_empty(volume):
    for t in range(2):
        peak = volume[..., t].max()
        assert not any(is_nearly_empty(volume[:, :, z, t], peak) for z in range(24))


def test_nearly_empty_threshold():
    image = np.zeros((20, 20))
    assert is_nearly_empty(image, 100.0)
    # 20 of 400 pixels (5 %) above 10 % of the volume maximum is enough, 19 is not.
    image.flat[:20] = 10.5
    assert not is_nearly_empty(image, 100.0)
    image.flat[19] = 10.0
    assert is_nearly_empty(image, 100.0)


def test_normalise_by_max_errors():
    with pytest.raises(ValueError, match="non-negative magnitude image, got minimum -1.0"):
        normalise_by_max(np.array([[-1.0, 2.0]]))
    with pytest.raises(ValueError, match="all-zero image"):
        normalise_by_max(np.zeros((3, 3)))


def test_invalid_split_raises():
    with pytest.raises(ValueError, match="split must be 'train' or 'test', got 'val'"):
        mri_slices("val")
    with pytest.raises(ValueError, match="split must be 'train' or 'test'"):
        mri_slice_ids("validation")


def test_dicom_image():
    image = dicom_mr_image()
    pixels = pydicom.dcmread(get_testdata_file("MR_small.dcm")).pixel_array

    assert image.shape == (64, 64)
    assert image.dtype == torch.float32
    assert int(pixels.min()) == 127
    assert int(pixels.max()) == 2145
    assert float(image.max()) == 1.0
    assert float(image.min()) == pytest.approx(127 / 2145)
    torch.testing.assert_close(dicom_mr_image(torch.float64), torch.tensor(pixels / 2145.0), rtol=0, atol=0)
