r"""Real natural gray images for image reconstruction: a fixed training set, a fixed test set and patches.

Every image ships inside an installed package, so nothing is downloaded at run time:
``skimage.data`` (images that need no pooch download), ``sklearn.datasets.load_sample_image`` and
``pywt.data``. Gray values are floats in [0, 1]: 8-bit values are divided by 255, and colour images
become :math:`0.2125 R + 0.7154 G + 0.0721 B` (the weights of ``skimage.color.rgb2gray``), through
:func:`unrolled.problems.image_patches.to_gray`.

Splits (fixed constants, disjoint by name and by content):

* :data:`TRAIN_IMAGES`: astronaut, coffee, chelsea, rocket, brick, grass, gravel (``skimage.data``)
  and china (scikit-learn). Training and validation patches come only from these.
* :data:`TEST_IMAGES`: camera, moon, coins, clock, immunohistochemistry (``skimage.data``), flower
  (scikit-learn), ascent and aero (``pywt.data``). :func:`test_images` center-crops each to
  ``size`` × ``size`` (256 × 256 by default, the size of the Set11 test images of compressive-sensing
  papers such as ISTA-Net). The crop keeps the native resolution, so test pixels have the scale of
  the training patches.

Left out on purpose:

* ``pywt.data.camera`` and ``skimage.data.cat``, the same photographs as ``camera`` and ``chelsea``
  (thumbnail correlation 1.0).
* text and page, scanned documents too small for a 256 × 256 crop (172 × 448 and 191 × 384).
* hubble_deep_field, mostly black sky, which inflates PSNR.
* retina (1411 × 1411), which would dominate window-uniform patch sampling and has large flat regions.

No two images of the two splits have 64 × 64 thumbnails with correlation above
0.52 (scikit-image 0.26, scikit-learn 1.9, PyWavelets 1.9).

Patches: :func:`sample_patches` draws each patch uniformly among all ``patch_size`` × ``patch_size``
windows of all images of the split, so an image is chosen with probability proportional to its
number of windows. Unlike :class:`unrolled.problems.image_patches.ImagePatchCS`, all-black windows are
kept, because PSNR with a fixed data range is defined on them. ISTA-Net (Zhang, Ghanem, "ISTA-Net:
Interpretable optimization-inspired deep network for image compressive sensing", CVPR 2018,
arXiv:1706.07929) trains on 33 × 33 blocks.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import Tensor

from unrolled.problems import image_patches
from unrolled.problems.base import seeded_generator

# Name -> (package, key). The skimage and sklearn entries are those of image_patches.IMAGE_SOURCES and
# load through its cached loader. The pywt entries are loaded here.
NATURAL_IMAGE_SOURCES: dict[str, tuple[str, str]] = {
    **image_patches.IMAGE_SOURCES,
    "ascent": ("pywt", "ascent"),
    "aero": ("pywt", "aero"),
}

TRAIN_IMAGES = ("astronaut", "coffee", "chelsea", "rocket", "china", "brick", "grass", "gravel")
TEST_IMAGES = ("camera", "moon", "coins", "clock", "flower", "ascent", "aero", "immunohistochemistry")

# Seed of the fixed validation patches, which come from the training images. The other problems use
# 2 as their validation seed too.
VALIDATION_SEED = 2

_SPLIT_IMAGES = {"train": TRAIN_IMAGES, "test": TEST_IMAGES}


def _check_name(name: str) -> None:
    if name not in NATURAL_IMAGE_SOURCES:
        raise ValueError(f"unknown image {name!r}. Expected one of: {', '.join(sorted(NATURAL_IMAGE_SOURCES))}.")


def _check_split(split: str) -> tuple[str, ...]:
    if split not in _SPLIT_IMAGES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}. Validation patches come from validation_patches().")
    return _SPLIT_IMAGES[split]


@functools.lru_cache(maxsize=None)
def _load_pywt_gray(key: str) -> np.ndarray:
    """Load ``pywt.data.<key>()`` as read-only float64 gray values in [0, 1], cached per process."""
    import pywt.data

    gray = image_patches.to_gray(np.asarray(getattr(pywt.data, key)()))
    gray.setflags(write=False)
    return gray


def load_gray_image(name: str, dtype: torch.dtype = torch.float32) -> Tensor:
    """Load the image ``name`` of :data:`NATURAL_IMAGE_SOURCES` as a new (H, W) tensor of gray values in [0, 1].

    The decoded image is cached for the life of the process, and each call returns a fresh copy.

    Raises:
        ValueError: ``name`` is not in :data:`NATURAL_IMAGE_SOURCES`.
    """
    _check_name(name)
    package, key = NATURAL_IMAGE_SOURCES[name]
    if package == "pywt":
        gray = _load_pywt_gray(key)
    else:
        gray = image_patches.load_gray_image(name)
    return torch.tensor(gray, dtype=dtype)


@functools.lru_cache(maxsize=None)
def _split_images(split: str, dtype: torch.dtype) -> tuple[Tensor, ...]:
    """Load the gray images of ``split``, cached because every training step samples from them."""
    return tuple(load_gray_image(name, dtype) for name in _check_split(split))


def _check_size(size: int, argument: str, names: tuple[str, ...], images: tuple[Tensor, ...]) -> None:
    """Raise ``ValueError`` unless 1 <= ``size`` <= the smaller side of every image."""
    if size < 1:
        raise ValueError(f"{argument} must be >= 1, got {size}.")
    for name, image in zip(names, images):
        if size > min(image.shape):
            raise ValueError(
                f"{argument}={size} exceeds the smaller side of image {name!r}, shape {tuple(image.shape)}. "
                f"Use {argument} <= {min(min(im.shape) for im in images)}."
            )


def test_images(size: int = 256, dtype: torch.dtype = torch.float32) -> Tensor:
    """Return the :data:`TEST_IMAGES`, center-cropped to ``size`` × ``size``, as an (8, size, size) tensor.

    The crop of an H × W image starts at row ``(H - size) // 2`` and column ``(W - size) // 2``. There
    is no resampling, so the values are the gray values of the full image. ``size`` can be at most 300,
    the height of ``clock``.
    """
    images = _split_images("test", torch.float64)
    _check_size(size, "size", TEST_IMAGES, images)

    crops = []
    for image in images:
        top = (image.shape[0] - size) // 2
        left = (image.shape[1] - size) // 2
        crops.append(image[top : top + size, left : left + size])
    return torch.stack(crops).to(dtype)


# pytest collects functions named test_* that a test module imports, but this one loads data.
test_images.__test__ = False


def _draw_windows(
    shapes: list[tuple[int, int]], n_patches: int, patch_size: int, generator: torch.Generator
) -> tuple[Tensor, Tensor, Tensor]:
    """Draw windows uniformly over all windows of all images: returns image index, top row and left column."""
    n_cols = torch.tensor([width - patch_size + 1 for _, width in shapes])
    n_windows = torch.tensor([(height - patch_size + 1) * (width - patch_size + 1) for height, width in shapes])
    windows_end = torch.cumsum(n_windows, dim=0)

    position = torch.randint(int(windows_end[-1]), (n_patches,), generator=generator)
    image_index = torch.searchsorted(windows_end, position, right=True)
    window = position - (windows_end - n_windows)[image_index]
    return image_index, window // n_cols[image_index], window % n_cols[image_index]


def _augment(patches: Tensor, generator: torch.Generator) -> Tensor:
    """Apply to each patch one of the 8 flips and rotations by multiples of 90 degrees, uniformly."""
    turns = torch.randint(4, (patches.shape[0],), generator=generator)
    flipped = torch.randint(2, (patches.shape[0],), generator=generator).bool()

    patches[flipped] = patches[flipped].flip(-1)
    for k in (1, 2, 3):
        selected = turns == k
        patches[selected] = torch.rot90(patches[selected], k, dims=(-2, -1))
    return patches


def sample_patches(
    n_patches: int,
    patch_size: int,
    generator: torch.Generator,
    split: str = "train",
    augment: bool = False,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Draw ``n_patches`` gray patches, uniform over the windows of the ``split`` images, as (n_patches, patch_size, patch_size).

    Args:
        n_patches: number of patches, >= 0.
        patch_size: side of the square patches, at most 300 (the smaller side of ``chelsea`` in the
            training set and of ``clock`` in the test set).
        generator: CPU generator. The window positions are drawn first, then (with ``augment``) the
            transforms, so an augmented draw moves the same windows as the plain draw from the same seed.
        split: ``"train"`` (:data:`TRAIN_IMAGES`) or ``"test"`` (:data:`TEST_IMAGES`).
        augment: apply a uniformly chosen flip or rotation by a multiple of 90 degrees to each patch.
        dtype: floating dtype of the result.

    Raises:
        ValueError: unknown ``split``, negative ``n_patches``, or ``patch_size`` outside 1 to the
            smaller side of the smallest image.
    """
    names = _check_split(split)
    if n_patches < 0:
        raise ValueError(f"n_patches must be >= 0, got {n_patches}.")
    images = _split_images(split, dtype)
    _check_size(patch_size, "patch_size", names, images)

    image_index, rows, cols = _draw_windows([tuple(image.shape) for image in images], n_patches, patch_size, generator)
    grid = torch.arange(patch_size)
    patches = torch.empty(n_patches, patch_size, patch_size, dtype=dtype)
    for k, image in enumerate(images):
        selected = (image_index == k).nonzero().squeeze(1)
        row_index = rows[selected, None, None] + grid[None, :, None]
        col_index = cols[selected, None, None] + grid[None, None, :]
        patches[selected] = image[row_index, col_index]

    if augment:
        patches = _augment(patches, generator)
    return patches


def validation_patches(
    n_patches: int, patch_size: int, seed: int = VALIDATION_SEED, dtype: torch.dtype = torch.float32
) -> Tensor:
    """Return a fixed validation set of patches from the training images, drawn without augmentation from ``seed``.

    The patches are windows of :data:`TRAIN_IMAGES`, possibly the same windows that training draws,
    and never come from :data:`TEST_IMAGES`. Calls with the same arguments return the same values.
    """
    return sample_patches(n_patches, patch_size, seeded_generator(seed), split="train", dtype=dtype)
