r"""Compressive sensing of natural-image patches in the 2-D DCT basis.

A patch :math:`p \in [0, 1]^{N}` (``patch_size`` × ``patch_size`` gray values, flattened row-major,
:math:`N = \text{patch\_size}^2`, 256 by default) is measured as

.. math:: y = \Phi p + w, \qquad p = D x, \qquad A = \Phi D,

so the code ``x`` that the solvers and unrolled networks recover is :math:`x = D^\top p`.

* :math:`\Phi` (m × N, default m = 128) has i.i.d. :math:`\mathcal N(0, 1/m)` entries drawn from
  ``operator_seed``. Its columns are not normalised.
* :math:`D` is the orthonormal 2-D DCT-II basis :math:`D = (C \otimes C)^\top`, where
  :math:`C_{kj} = \alpha_k \cos(\pi (2j + 1) k / (2\,\text{patch\_size}))` with
  :math:`\alpha_0 = \sqrt{1/\text{patch\_size}}` and :math:`\alpha_k = \sqrt{2/\text{patch\_size}}` for
  k > 0. Its columns are the atoms, and :math:`D^\top p` equals
  ``scipy.fft.dctn(P, norm="ortho").ravel()`` for the patch P = ``p.reshape(patch_size, patch_size)``.
* :meth:`ImagePatchCS.signal` maps a code back to the patch :math:`p = D x`, so PSNR can be computed
  on the [0, 1] range.

Images: the problem draws patches only from images that ship inside scikit-image (``skimage.data``)
and scikit-learn (``sklearn.datasets.load_sample_image``), so nothing is downloaded at run time.
:data:`IMAGE_SOURCES` lists the known names. Training, validation and test images are disjoint lists.

Gray conversion: 8-bit values are divided by 255. Colour images become
:math:`0.2125 R + 0.7154 G + 0.0721 B`, the weights of ``skimage.color.rgb2gray`` in scikit-image 0.26,
so gray values stay in [0, 1].

Patch extraction: each patch is a ``patch_size`` × ``patch_size`` window drawn uniformly among all
windows of all images of the split, so an image is picked with probability proportional to its
number of windows. Windows whose pixels are all 0 are skipped, because an all-black patch has x = 0
and its per-sample NMSE is undefined. With the default lists this removes 10,668 of the 247,009
16 × 16 windows of ``astronaut`` (its black border) and nothing else. Training patches are drawn fresh
from the generator passed to :meth:`ImagePatchCS.sample`. The validation and test sets are drawn the
same way from their own seeds (:meth:`Problem.fixed_set`).

Noise convention (the one of :mod:`unrolled.problems.sparse_coding`): at ``snr_db = s`` each sample gets
white Gaussian noise of standard deviation :math:`\sigma_i = \|\Phi p_i\|_2 / \sqrt{m} \cdot 10^{-s/20}`,
so that :math:`10\log_{10}(\|\Phi p_i\|^2 / E\|w_i\|^2) = s` for every sample. ``snr_db = None`` is
noiseless.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from unrolled.problems.base import SPLITS, Problem, add_noise, check_common_arguments, seeded_generator

# Name -> (package, key): ``skimage.data.<key>()`` or ``sklearn.datasets.load_sample_image(<key>)``.
# Only natural images that ship inside the installed wheels are listed. scikit-image images that need
# pooch (brain, cells3d, eagle, kidney, lily, skin, ...) are left out, and so is ``skimage.data.cat``,
# which is the same photograph as ``chelsea``.
IMAGE_SOURCES: dict[str, tuple[str, str]] = {
    "astronaut": ("skimage", "astronaut"),
    "brick": ("skimage", "brick"),
    "camera": ("skimage", "camera"),
    "chelsea": ("skimage", "chelsea"),
    "clock": ("skimage", "clock"),
    "coffee": ("skimage", "coffee"),
    "coins": ("skimage", "coins"),
    "grass": ("skimage", "grass"),
    "gravel": ("skimage", "gravel"),
    "hubble_deep_field": ("skimage", "hubble_deep_field"),
    "immunohistochemistry": ("skimage", "immunohistochemistry"),
    "moon": ("skimage", "moon"),
    "page": ("skimage", "page"),
    "retina": ("skimage", "retina"),
    "rocket": ("skimage", "rocket"),
    "text": ("skimage", "text"),
    "china": ("sklearn", "china.jpg"),
    "flower": ("sklearn", "flower.jpg"),
}

DEFAULT_TRAIN_IMAGES = ("astronaut", "camera", "coffee", "chelsea", "rocket", "brick", "gravel", "grass")
DEFAULT_VAL_IMAGES = ("moon", "text")
DEFAULT_TEST_IMAGES = ("china", "flower", "coins", "clock")

# Weights of skimage.color.rgb2gray (scikit-image 0.26); they sum to 1, so gray values stay in [0, 1].
RGB_TO_GRAY_WEIGHTS = np.array([0.2125, 0.7154, 0.0721])


def check_image_name(name: str, argument: str = "image name") -> None:
    """Raise ``ValueError`` naming ``name`` and the valid names unless ``name`` is in :data:`IMAGE_SOURCES`."""
    if name not in IMAGE_SOURCES:
        raise ValueError(f"unknown image {name!r} in {argument}; expected one of: {', '.join(sorted(IMAGE_SOURCES))}.")


def to_gray(image: np.ndarray) -> np.ndarray:
    """Convert an 8-bit gray (H, W) or RGB (H, W, 3) image to float64 gray values in [0, 1]."""
    if image.dtype != np.uint8:
        raise ValueError(f"expected an 8-bit (uint8) image, got dtype {image.dtype}.")
    values = image.astype(np.float64) / 255.0
    if values.ndim == 3 and values.shape[-1] == 3:
        values = values @ RGB_TO_GRAY_WEIGHTS
    if values.ndim != 2:
        raise ValueError(f"expected a gray (H, W) or RGB (H, W, 3) image, got shape {image.shape}.")
    return np.clip(values, 0.0, 1.0)


@functools.lru_cache(maxsize=None)
def load_gray_image(name: str) -> np.ndarray:
    """Load the image ``name`` of :data:`IMAGE_SOURCES` as read-only float64 gray values in [0, 1].

    The result is cached for the life of the process, so building many problems decodes each image once.
    """
    check_image_name(name)
    package, key = IMAGE_SOURCES[name]

    # Imported here so that importing the problem registry does not import scikit-image or scikit-learn.
    if package == "skimage":
        import skimage.data

        image = getattr(skimage.data, key)()
    else:
        from sklearn.datasets import load_sample_image

        image = load_sample_image(key)

    gray = to_gray(np.asarray(image))
    gray.setflags(write=False)
    return gray


def dct_matrix(size: int) -> Tensor:
    r"""Return the orthonormal 1-D DCT-II matrix C (size × size, float64): ``C @ v`` is the DCT of ``v``."""
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}.")
    k = torch.arange(size, dtype=torch.float64)[:, None]
    j = torch.arange(size, dtype=torch.float64)[None, :]
    C = torch.cos(math.pi * (2 * j + 1) * k / (2 * size)) * math.sqrt(2.0 / size)
    C[0] /= math.sqrt(2.0)
    return C


def dct2_basis(patch_size: int) -> Tensor:
    r"""Return the orthonormal 2-D DCT basis :math:`D = (C \otimes C)^\top` (N × N, N = patch_size²).

    Columns are the atoms. For a row-major flattened patch ``p``, ``D.T @ p`` is the flattened
    ``scipy.fft.dctn(P, norm="ortho")`` of the patch P, because :math:`\mathrm{vec}(C P C^\top) = (C \otimes C)\,\mathrm{vec}(P)`.
    """
    C = dct_matrix(patch_size)
    return torch.kron(C, C).T.contiguous()


def _image_list(names: Sequence[str], argument: str) -> tuple[str, ...]:
    """Validate one split's image names and return them as a tuple."""
    if isinstance(names, str):
        raise TypeError(f"{argument} must be a list or tuple of image names, got the string {names!r}; write [{names!r}].")
    names = tuple(names)
    if not names:
        raise ValueError(f"{argument} must name at least one image, got an empty list.")
    for name in names:
        check_image_name(name, argument)
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"{argument} lists {duplicates} more than once; name each image once.")
    return names


@functools.lru_cache(maxsize=None)
def _nonblack_windows(name: str, patch_size: int) -> Tensor | None:
    """Flat indices (row-major over window positions) of the windows of ``name`` with a non-zero pixel.

    Returns None when every window qualifies. An all-black patch has x = 0, for which the per-sample
    NMSE is undefined, so such windows are never sampled. The count of non-zero pixels per window
    comes from an integer integral image, so the test is exact.
    """
    nonzero = np.pad((load_gray_image(name) > 0).astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    p = patch_size
    count = nonzero[p:, p:] - nonzero[:-p, p:] - nonzero[p:, :-p] + nonzero[:-p, :-p]
    if (count > 0).all():
        return None
    return torch.from_numpy(np.flatnonzero(count > 0))


class _PatchPool:
    """The gray images of one split, sampled uniformly over their windows that are not all black."""

    def __init__(self, names: tuple[str, ...], patch_size: int) -> None:
        self.images = [torch.tensor(load_gray_image(name)) for name in names]
        for name, image in zip(names, self.images):
            if min(image.shape) < patch_size:
                raise ValueError(f"patch_size={patch_size} exceeds the smaller side of image {name!r}, shape {tuple(image.shape)}.")
        self.patch_size = patch_size
        self.window_index = [_nonblack_windows(name, patch_size) for name in names]

        n_windows = []
        for image, window_index in zip(self.images, self.window_index):
            n_all = (image.shape[0] - patch_size + 1) * (image.shape[1] - patch_size + 1)
            n_windows.append(n_all if window_index is None else len(window_index))
        self.windows_end = torch.cumsum(torch.tensor(n_windows), dim=0)
        self.windows_start = self.windows_end - torch.tensor(n_windows)

    def sample(self, n_samples: int, generator: torch.Generator) -> Tensor:
        """Draw ``n_samples`` flattened patches (n_samples, patch_size²), float64."""
        total = int(self.windows_end[-1])
        position = torch.randint(total, (n_samples,), generator=generator, dtype=torch.int64)
        image_index = torch.searchsorted(self.windows_end, position, right=True)

        grid = torch.arange(self.patch_size)
        patches = torch.empty(n_samples, self.patch_size, self.patch_size, dtype=torch.float64)
        for k, image in enumerate(self.images):
            selected = (image_index == k).nonzero().squeeze(1)
            if selected.numel() == 0:
                continue

            # Map the position to the window's flat index, then to its top-left corner.
            window = position[selected] - self.windows_start[k]
            if self.window_index[k] is not None:
                window = self.window_index[k][window]
            n_cols = image.shape[1] - self.patch_size + 1
            row, col = window // n_cols, window % n_cols

            rows = row[:, None, None] + grid[None, :, None]
            cols = col[:, None, None] + grid[None, None, :]
            patches[selected] = image[rows, cols]
        return patches.reshape(n_samples, -1)


class ImagePatchCS(Problem):
    """Compressive sensing of natural-image patches, sparse in the 2-D DCT (module docstring has the model).

    Args:
        m: number of measurements per patch.
        patch_size: side of the square patches; the code has n = patch_size² entries.
        snr_db: signal-to-noise ratio in dB per sample; None for noiseless measurements.
        train_images, val_images, test_images: names from :data:`IMAGE_SOURCES`, pairwise disjoint.
        operator_seed, train_seed, val_seed, test_seed: seeds of Φ and of the three data streams.
        n_val, n_test: sizes of the fixed validation and test sets.

    Attributes:
        Phi: measurement matrix Φ, float64 (m, n).
        D: orthonormal 2-D DCT basis, float64 (n, n), columns are atoms.
        A: the operator Φ D seen by the solvers, float64 (m, n).
        images: image names per split (``"train"``, ``"val"``, ``"test"``).
        signal_range: 1.0, the range of the gray values and the PSNR data range.
    """

    name = "image_patches"
    # Peak-to-peak range of signal(x): gray values lie in [0, 1]. The comparison report uses it as the
    # data range of PSNR.
    signal_range = 1.0

    def __init__(
        self,
        m: int = 128,
        patch_size: int = 16,
        snr_db: float | None = None,
        train_images: Sequence[str] = DEFAULT_TRAIN_IMAGES,
        val_images: Sequence[str] = DEFAULT_VAL_IMAGES,
        test_images: Sequence[str] = DEFAULT_TEST_IMAGES,
        operator_seed: int = 0,
        train_seed: int = 1,
        val_seed: int = 2,
        test_seed: int = 3,
        n_val: int = 1000,
        n_test: int = 1000,
    ) -> None:
        if m < 1:
            raise ValueError(f"m must be >= 1, got {m}.")
        if patch_size < 1:
            raise ValueError(f"patch_size must be >= 1, got {patch_size}.")
        check_common_arguments(snr_db, n_val, n_test)

        self.images = {
            "train": _image_list(train_images, "train_images"),
            "val": _image_list(val_images, "val_images"),
            "test": _image_list(test_images, "test_images"),
        }
        for first, second in (("train", "val"), ("train", "test"), ("val", "test")):
            shared = sorted(set(self.images[first]) & set(self.images[second]))
            if shared:
                raise ValueError(f"{first}_images and {second}_images share {shared}; the three splits must use disjoint images, so remove them from one list.")

        self.patch_size = patch_size
        self.snr_db = snr_db
        self.operator_seed = operator_seed
        self.seeds = {"train": train_seed, "val": val_seed, "test": test_seed}
        self.n_val = n_val
        self.n_test = n_test

        # The pools check patch_size against the image sizes, so they are built before the n × n basis.
        self._pools = {split: _PatchPool(self.images[split], patch_size) for split in SPLITS}
        n = patch_size * patch_size
        self.Phi = torch.randn(m, n, generator=seeded_generator(operator_seed), dtype=torch.float64) / math.sqrt(m)
        self.D = dct2_basis(patch_size)
        self.A = self.Phi @ self.D

    def config(self) -> dict[str, Any]:
        return {
            "m": self.m,
            "patch_size": self.patch_size,
            "snr_db": self.snr_db,
            "train_images": list(self.images["train"]),
            "val_images": list(self.images["val"]),
            "test_images": list(self.images["test"]),
            "operator_seed": self.operator_seed,
            "train_seed": self.seeds["train"],
            "val_seed": self.seeds["val"],
            "test_seed": self.seeds["test"],
            "n_val": self.n_val,
            "n_test": self.n_test,
        }

    def sample_patches(self, n_samples: int, generator: torch.Generator, split: str = "train") -> Tensor:
        """Draw ``n_samples`` flattened gray patches of the ``split`` images, float64 (n_samples, n) in [0, 1]."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
        if n_samples < 0:
            raise ValueError(f"n_samples must be >= 0, got {n_samples}.")
        return self._pools[split].sample(n_samples, generator)

    def sample(self, n_samples: int, generator: torch.Generator, split: str = "train") -> tuple[Tensor, Tensor]:
        patches = self.sample_patches(n_samples, generator, split)
        x = patches @ self.D
        return add_noise(x @ self.A.T, self.snr_db, generator), x

    def signal(self, x: Tensor) -> Tensor:
        """Map codes ``x`` (..., n) to flattened patches ``p = D x`` (..., n), in the dtype and device of ``x``."""
        return x @ self.D.T.to(dtype=x.dtype, device=x.device)
