"""Tests of the natural-image splits: disjoint names and content, value ranges, test crops and patch sampling."""

from __future__ import annotations

import numpy as np
import pytest
import pywt.data
import skimage.data
import torch
from skimage.transform import resize

from unrolled.problems import natural_images
from unrolled.problems.base import seeded_generator
from unrolled.problems.image_patches import to_gray
from unrolled.problems.natural_images import (
    NATURAL_IMAGE_SOURCES,
    TEST_IMAGES,
    TRAIN_IMAGES,
    VALIDATION_SEED,
    load_gray_image,
    sample_patches,
    validation_patches,
)

# Shapes (H, W) of the split images with scikit-image 0.26, scikit-learn 1.9 and PyWavelets 1.9.
TRAIN_SHAPES = [(512, 512), (400, 600), (300, 451), (427, 640), (427, 640), (512, 512), (512, 512), (512, 512)]
TEST_SHAPES = [(512, 512), (512, 512), (303, 384), (300, 400), (427, 640), (512, 512), (512, 512), (512, 512)]


def thumbnails(images: list[np.ndarray]) -> np.ndarray:
    """Flattened 64 x 64 anti-aliased thumbnails, one row per image, for detecting the same photograph twice."""
    return np.stack([resize(image, (64, 64), anti_aliasing=True).ravel() for image in images])


def max_cross_correlation(first: list[np.ndarray], second: list[np.ndarray]) -> float:
    """Largest absolute correlation between a thumbnail of ``first`` and one of ``second``."""
    correlation = np.corrcoef(thumbnails(first), thumbnails(second))
    return float(np.abs(correlation[: len(first), len(first) :]).max())


def test_split_names_are_disjoint_and_known():
    assert len(TRAIN_IMAGES) >= 5
    assert len(TEST_IMAGES) >= 8
    assert not set(TRAIN_IMAGES) & set(TEST_IMAGES)
    assert len(set(TRAIN_IMAGES)) == len(TRAIN_IMAGES)
    assert len(set(TEST_IMAGES)) == len(TEST_IMAGES)
    assert set(TRAIN_IMAGES) | set(TEST_IMAGES) <= set(NATURAL_IMAGE_SOURCES)


def test_no_photograph_in_both_splits():
    train = [load_gray_image(name, torch.float64).numpy() for name in TRAIN_IMAGES]
    test = [load_gray_image(name, torch.float64).numpy() for name in TEST_IMAGES]
    # Also against the duplicates left out of the sources: each must match only its own split.
    pywt_camera = to_gray(pywt.data.camera())
    cat = to_gray(skimage.data.cat())

    assert max_cross_correlation(train, test) < 0.99
    assert max_cross_correlation([pywt_camera], train) < 0.99
    assert max_cross_correlation([cat], test) < 0.99


def test_no_photograph_in_two_sources():
    names = sorted(NATURAL_IMAGE_SOURCES)
    correlation = np.corrcoef(thumbnails([load_gray_image(name, torch.float64).numpy() for name in names]))
    np.fill_diagonal(correlation, 0.0)
    first, second = np.unravel_index(np.abs(correlation).argmax(), correlation.shape)
    assert abs(correlation[first, second]) < 0.99, (names[first], names[second])


def test_duplicate_check_detects_known_duplicates():
    # The same check flags the pairs that the module leaves out.
    camera = load_gray_image("camera", torch.float64).numpy()
    chelsea = load_gray_image("chelsea", torch.float64).numpy()
    assert max_cross_correlation([camera], [to_gray(pywt.data.camera())]) > 0.999
    assert max_cross_correlation([chelsea], [to_gray(skimage.data.cat())]) > 0.999


def test_loaded_images_shapes_and_range():
    for names, shapes in ((TRAIN_IMAGES, TRAIN_SHAPES), (TEST_IMAGES, TEST_SHAPES)):
        for name, shape in zip(names, shapes):
            image = load_gray_image(name)
            assert image.shape == shape, name
            assert image.dtype == torch.float32
            assert float(image.min()) >= 0.0, name
            assert float(image.max()) <= 1.0, name
            assert float(image.std()) > 0.05, name


def test_pywt_image_is_8_bit_divided_by_255():
    ascent = load_gray_image("ascent", torch.float64)
    expected = torch.tensor(pywt.data.ascent(), dtype=torch.float64) / 255
    assert torch.equal(ascent, expected)


def test_load_returns_fresh_copy():
    first = load_gray_image("aero")
    first.zero_()
    assert float(load_gray_image("aero").max()) > 0


def test_unknown_image_name_raises():
    with pytest.raises(ValueError, match="unknown image 'lena'. Expected one of: aero, ascent"):
        load_gray_image("lena")


def test_test_images_are_center_crops():
    crops = natural_images.test_images()

    assert crops.shape == (8, 256, 256)
    assert crops.dtype == torch.float32
    assert float(crops.min()) >= 0.0
    assert float(crops.max()) <= 1.0
    for crop, name, (height, width) in zip(crops, TEST_IMAGES, TEST_SHAPES):
        top, left = (height - 256) // 2, (width - 256) // 2
        assert torch.equal(crop, load_gray_image(name)[top : top + 256, left : left + 256]), name
    assert torch.equal(natural_images.test_images(), crops)


def test_test_images_size_limit():
    assert natural_images.test_images(300).shape == (8, 300, 300)
    with pytest.raises(ValueError, match=r"size=301 exceeds the smaller side of image 'clock', shape \(300, 400\). Use size <= 300"):
        natural_images.test_images(301)


def test_patches_are_windows_of_the_split_images():
    for split, names in (("train", TRAIN_IMAGES), ("test", TEST_IMAGES)):
        patches = sample_patches(50, 33, torch.Generator().manual_seed(0), split=split)
        image_index, rows, cols = natural_images._draw_windows(
            [tuple(load_gray_image(name).shape) for name in names], 50, 33, torch.Generator().manual_seed(0)
        )

        assert patches.shape == (50, 33, 33)
        assert patches.dtype == torch.float32
        for patch, k, row, col in zip(patches, image_index.tolist(), rows.tolist(), cols.tolist()):
            image = load_gray_image(names[k])
            assert torch.equal(patch, image[row : row + 33, col : col + 33])


def test_windows_drawn_uniformly():
    shapes = [(40, 40), (20, 60), (33, 33)]
    n_windows = np.array([(h - 8 + 1) * (w - 8 + 1) for h, w in shapes])
    n_draws = 60_000

    image_index, rows, cols = natural_images._draw_windows(shapes, n_draws, 8, torch.Generator().manual_seed(1))

    counts = np.bincount(image_index.numpy(), minlength=3)
    expected = n_draws * n_windows / n_windows.sum()
    assert np.all(np.abs(counts - expected) < 5 * np.sqrt(expected))
    heights = torch.tensor([h for h, _ in shapes])[image_index]
    widths = torch.tensor([w for _, w in shapes])[image_index]
    assert int(rows.min()) == 0
    assert int(cols.min()) == 0
    assert bool((rows <= heights - 8).all())
    assert bool((cols <= widths - 8).all())
    # Every top-left corner of the 33 x 33 image is reached.
    corners = set(zip(rows[image_index == 2].tolist(), cols[image_index == 2].tolist()))
    assert len(corners) == 26 * 26


def test_patches_reproducible_per_seed():
    first = sample_patches(20, 16, torch.Generator().manual_seed(3), dtype=torch.float64)
    second = sample_patches(20, 16, torch.Generator().manual_seed(3), dtype=torch.float64)
    other = sample_patches(20, 16, torch.Generator().manual_seed(4), dtype=torch.float64)
    assert first.dtype == torch.float64
    assert torch.equal(first, second)
    assert not torch.equal(first, other)


def test_augmented_patches_are_flips_and_rotations():
    plain = sample_patches(400, 9, torch.Generator().manual_seed(5))
    augmented = sample_patches(400, 9, torch.Generator().manual_seed(5), augment=True)

    transforms_seen = set()
    for original, moved in zip(plain, augmented):
        matches = [
            (flip, turns)
            for flip in (False, True)
            for turns in range(4)
            if torch.equal(moved, torch.rot90(original.flip(-1) if flip else original, turns, dims=(-2, -1)))
        ]
        assert matches, "augmented patch is not a flip or rotation of the plain patch"
        transforms_seen.update(matches)
    assert len(transforms_seen) == 8


def test_validation_patches_fixed_and_from_training_images():
    patches = validation_patches(30, 33)
    again = validation_patches(30, 33)
    expected = sample_patches(30, 33, seeded_generator(VALIDATION_SEED), split="train")
    assert torch.equal(patches, again)
    assert torch.equal(patches, expected)


def test_patch_argument_errors():
    rng = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match=r"patch_size=301 exceeds the smaller side of image 'chelsea', shape \(300, 451\)"):
        sample_patches(1, 301, rng)
    with pytest.raises(ValueError, match="patch_size must be >= 1, got 0"):
        sample_patches(1, 0, rng)
    with pytest.raises(ValueError, match="n_patches must be >= 0, got -1"):
        sample_patches(-1, 8, rng)
    with pytest.raises(ValueError, match="split must be 'train' or 'test', got 'val'"):
        sample_patches(1, 8, rng, split="val")
    assert sample_patches(0, 8, rng).shape == (0, 8, 8)
