r"""Real MRI magnitude images that ship inside nibabel and pydicom, normalised to [0, 1].

NIfTI volume: ``example4d.nii.gz`` from nibabel's test data (``nibabel.testing.data_path``, nibabel
5.4). It is a 4-D int16 series of shape 128 × 96 × 24 × 2 (x, y, z, time), voxels of
2 × 2 × 2.2 mm, repetition time 2 s, orientation codes (L, A, S), values 0 to 1162. The third axis
runs inferior to superior, so ``volume[:, :, z, t]`` is axial slice z at time point t, a 128 × 96
image. Rows follow the first voxel axis and columns the second, without transposing or flipping.

* Normalisation: each slice is divided by its own maximum, so its largest value is exactly 1 and its
  values lie in [0, 1]. The stored values are non-negative magnitudes, and the header has no scaling.
* Split: :data:`MRI_TEST_SLICES` (z = 9 to 14) is the test set, and the other 18 slice indices are the
  training set. Both time points of a slice index belong to the same split, because the two time
  points of one slice are nearly the same image. The test block is contiguous, so only slices 8 and
  15 border it, but neighbouring slices lie 2.2 mm apart in the same subject: this split measures
  generalisation to new slices of one brain, not to new subjects.
* Empty slices: a slice is left out when fewer than :data:`MIN_FOREGROUND_FRACTION` (5 %) of its
  pixels exceed :data:`FOREGROUND_LEVEL` (10 %) of the maximum of its time point's volume, because
  PSNR on an almost empty slice measures background noise. No slice of this file is that empty: the
  smallest foreground fraction is 0.30, at z = 23. So the training set has 36 images and the test
  set 12.

DICOM image: ``MR_small.dcm`` from pydicom's test files (``pydicom.data.get_testdata_file``, pydicom
3.0), a 64 × 64 int16 MR slice with values 127 to 2145 and no rescale slope. It is divided by its
maximum like the NIfTI slices and is a test-only image.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

NIFTI_FILE = "example4d.nii.gz"
DICOM_FILE = "MR_small.dcm"

# Axial slice indices (third axis of example4d.nii.gz) held out for testing, both time points each.
MRI_TEST_SLICES = tuple(range(9, 15))

# A slice is nearly empty when fewer than MIN_FOREGROUND_FRACTION of its pixels exceed
# FOREGROUND_LEVEL times the maximum of its volume.
FOREGROUND_LEVEL = 0.1
MIN_FOREGROUND_FRACTION = 0.05


def nifti_path() -> Path:
    """Return the path of ``example4d.nii.gz`` inside the installed nibabel package."""
    from nibabel.testing import data_path

    return Path(data_path) / NIFTI_FILE


def is_nearly_empty(image: np.ndarray, volume_max: float) -> bool:
    """Return True when fewer than 5 % of the pixels of ``image`` exceed 10 % of ``volume_max``."""
    foreground_fraction = float(np.mean(image > FOREGROUND_LEVEL * volume_max))
    return foreground_fraction < MIN_FOREGROUND_FRACTION


def normalise_by_max(image: np.ndarray) -> np.ndarray:
    """Divide a non-negative magnitude image by its maximum, so the result lies in [0, 1] with maximum 1.

    Raises:
        ValueError: the image has a negative value or is all zero.
    """
    image = image.astype(np.float64)
    if image.min() < 0:
        raise ValueError(f"expected a non-negative magnitude image, got minimum {image.min()}.")
    peak = image.max()
    if peak == 0:
        raise ValueError("cannot normalise an all-zero image by its maximum.")
    return image / peak


@functools.lru_cache(maxsize=None)
def _nifti_slices() -> tuple[tuple[tuple[int, int], ...], np.ndarray]:
    """Load the kept (slice, time point) pairs, slice-major, and their normalised images (N, 128, 96), cached."""
    import nibabel

    volume = np.asarray(nibabel.load(nifti_path()).dataobj)
    ids = []
    images = []
    for z in range(volume.shape[2]):
        for t in range(volume.shape[3]):
            image = volume[:, :, z, t]
            if is_nearly_empty(image, volume[..., t].max()):
                continue
            ids.append((z, t))
            images.append(normalise_by_max(image))
    stacked = np.stack(images)
    stacked.setflags(write=False)
    return tuple(ids), stacked


def _split_rows(split: str) -> list[int]:
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}.")
    ids, _ = _nifti_slices()
    held_out = split == "test"
    return [row for row, (z, _) in enumerate(ids) if (z in MRI_TEST_SLICES) == held_out]


def mri_slice_ids(split: str) -> list[tuple[int, int]]:
    """Return the (slice index z, time point t) of each image of :func:`mri_slices` for ``split``, in the same order."""
    ids, _ = _nifti_slices()
    return [ids[row] for row in _split_rows(split)]


def mri_slices(split: str, dtype: torch.dtype = torch.float32) -> Tensor:
    """Return the axial slices of ``example4d.nii.gz`` of one split as an (N, 128, 96) tensor in [0, 1].

    ``split="train"`` gives N = 36 images (slice indices 0 to 8 and 15 to 23), ``"test"`` gives N = 12
    (:data:`MRI_TEST_SLICES`). Images are ordered by slice index, then time point
    (:func:`mri_slice_ids` lists them), and each is divided by its own maximum.

    Raises:
        ValueError: ``split`` is not ``"train"`` or ``"test"``.
    """
    rows = _split_rows(split)
    _, images = _nifti_slices()
    return torch.tensor(images[rows], dtype=dtype)


def dicom_mr_image(dtype: torch.dtype = torch.float32) -> Tensor:
    """Return the 64 × 64 image of pydicom's ``MR_small.dcm``, divided by its maximum, as a (64, 64) tensor in [0, 1]."""
    import pydicom
    from pydicom.data import get_testdata_file

    path = get_testdata_file(DICOM_FILE)
    if path is None:
        raise FileNotFoundError(f"pydicom's test data has no {DICOM_FILE}. Reinstall pydicom 3.0, whose wheel ships it.")
    dataset = pydicom.dcmread(path)
    return torch.tensor(normalise_by_max(dataset.pixel_array), dtype=dtype)
