r"""Image reconstruction tasks: real images, an operator, missing and noisy measurements, seeded splits.

A task draws ground-truth images ``x`` (gray values in [0, 1]), builds the operator that measures
them and returns :math:`y = A x + w` in an :class:`ImagingBatch`. Training batches come fresh from a
generator; validation and test sets are fixed by their own seeds, so a task's :meth:`~ImagingTask.spec`
regenerates them exactly.

* :class:`BlockCSTask`: block compressive sensing with 33 × 33 blocks and a Gaussian Φ with
  orthonormal rows (ISTA-Net's setting). Training on patches of natural images, testing on
  264 × 264 centre crops of the test images.
* :class:`InpaintingTask`: random pixel masks (``observed_ratio`` observed) and Gaussian noise of
  standard deviation ``sigma_255`` on the 0–255 scale, optionally salt-and-pepper outliers. Both may
  be ranges for training, so that one model learns many missing rates and noise levels.
* :class:`MRITask`: compressed-sensing MRI of real slices with a fixed Cartesian or random k-space
  mask, complex domain.

Noise is always added on the measured entries only: where a pixel or a k-space sample is missing, y is
exactly 0 (:meth:`unrolled.operators.LinearOperator.add_noise`).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from unrolled.degradations import add_salt_and_pepper, random_pixel_mask
from unrolled.operators import (
    ISTA_NET_BLOCK_SIZE,
    BlockCS,
    LinearOperator,
    MaskedFourier,
    PixelMask,
    cartesian_mask,
    gaussian_block_matrix,
    pad_to_block_multiple,
    random_mask,
)
from unrolled.problems.base import seeded_generator
from unrolled.problems.mri import dicom_mr_image, mri_slices
from unrolled.problems.natural_images import sample_patches, test_images

EVALUATION_SPLITS = ("val", "test")


@dataclass
class ImagingBatch:
    """Ground truth, measurements and the operator that links them, for a batch of N images.

    Attributes:
        x: ground-truth images (N, H, W), real, in [0, 1].
        y: measurements, of shape (N, *operator.out_shape), complex for k-space data.
        operator: the forward operator; a :class:`PixelMask` carries one mask per image.
        noise_std: (N,) standard deviation of the Gaussian noise on the [0, 1] scale.
        crop: the (H, W) window of the estimate to score; None scores the whole image.
    """

    x: Tensor
    y: Tensor
    operator: LinearOperator
    noise_std: Tensor
    crop: tuple[int, int] | None = None

    def __len__(self) -> int:
        return self.x.shape[0]

    def head(self, n: int) -> ImagingBatch:
        """Return the first ``n`` images (all of them when there are fewer), with their masks where each image has its own."""
        operator = self.operator
        if isinstance(operator, PixelMask) and operator.mask.ndim == 3:
            operator = PixelMask(operator.mask[:n])
        return ImagingBatch(self.x[:n], self.y[:n], operator, self.noise_std[:n], self.crop)

    def to(self, dtype: torch.dtype) -> ImagingBatch:
        """Return the batch with ``x``, ``y`` and ``noise_std`` cast (complex ``y`` keeps its complex kind)."""
        y_dtype = dtype.to_complex() if torch.is_complex(self.y) else dtype
        return ImagingBatch(self.x.to(dtype), self.y.to(y_dtype), self.operator, self.noise_std.to(dtype), self.crop)


def _range(value: float | list[float] | tuple[float, float], name: str, low: float, high: float) -> tuple[float, float]:
    """Return ``value`` as an interval (lo, hi) inside [low, high], a scalar being the interval (v, v)."""
    interval = (float(value), float(value)) if isinstance(value, (int, float)) else tuple(float(v) for v in value)
    if len(interval) != 2 or not low <= interval[0] <= interval[1] <= high:
        raise ValueError(f"{name} must be a number or an interval [lo, hi] with {low} <= lo <= hi <= {high}, got {value}.")
    return interval


def _uniform(interval: tuple[float, float], n: int, generator: torch.Generator) -> Tensor:
    low, high = interval
    return low + (high - low) * torch.rand(n, generator=generator, dtype=torch.float64)


def magnitude(image: Tensor) -> Tensor:
    """Return the real image to score: the modulus of a complex estimate, a real one unchanged."""
    return image.abs() if torch.is_complex(image) else image


class ImagingTask(abc.ABC):
    """A family of image reconstruction problems with seeded training batches and fixed evaluation sets."""

    name: str
    seeds: dict[str, int]
    #: whether estimates are complex images (scored by their modulus)
    complex_domain: bool = False

    @abc.abstractmethod
    def sample(self, batch_size: int, generator: torch.Generator) -> ImagingBatch:
        """Draw a training batch (float64)."""

    @abc.abstractmethod
    def _evaluation_set(self, split: str, generator: torch.Generator, **degradation: Any) -> ImagingBatch:
        """Build the validation or test set (float64) from ``generator``."""

    @abc.abstractmethod
    def config(self) -> dict[str, Any]:
        """Constructor arguments as plain Python values."""

    def spec(self) -> dict[str, Any]:
        """Plain data that rebuilds the task with :func:`build_imaging_task`."""
        return {"name": self.name, **self.config()}

    def fixed_set(self, split: str, **degradation: Any) -> ImagingBatch:
        """Return the validation (``"val"``) or test (``"test"``) set, cached.

        Keyword arguments override the degradation of the set (for example ``observed_ratio=0.3``
        for an inpainting task), as the robustness table does. The seed stays that of the split.
        """
        if split not in EVALUATION_SPLITS:
            raise ValueError(f"split must be one of {EVALUATION_SPLITS}, got {split!r}.")
        cache = self.__dict__.setdefault("_fixed_sets", {})
        key = (split, tuple(sorted(degradation.items())))
        if key not in cache:
            cache[key] = self._evaluation_set(split, seeded_generator(self.seeds[split]), **degradation)
        return cache[key]


class BlockCSTask(ImagingTask):
    r"""Block compressive sensing of natural images, :math:`y_b = \Phi x_b + w_b` per 33 × 33 block.

    Args:
        cs_ratio: measurements per pixel, m / B² (0.25 gives m = 272).
        block_size: B.
        patch_blocks: training patches are ``patch_blocks · B`` pixels square.
        test_size: test images are ``test_size`` square (264 = 8 blocks by default, so that no padding
            enters the scores); other sizes are zero-padded to a multiple of B for measuring and
            cropped back for scoring.
        sigma_255: noise standard deviation on the 0–255 scale (0: noiseless, the ISTA-Net setting).
        n_val: number of validation patches, drawn from the training images by ``val_seed``.
    """

    name = "block_cs"

    def __init__(
        self,
        cs_ratio: float = 0.25,
        block_size: int = ISTA_NET_BLOCK_SIZE,
        patch_blocks: int = 3,
        test_size: int = 264,
        sigma_255: float = 0.0,
        n_val: int = 32,
        operator_seed: int = 0,
        train_seed: int = 1,
        val_seed: int = 2,
        test_seed: int = 3,
    ) -> None:
        if patch_blocks < 1 or n_val < 1:
            raise ValueError(f"patch_blocks and n_val must be >= 1, got patch_blocks={patch_blocks}, n_val={n_val}.")
        if sigma_255 < 0:
            raise ValueError(f"sigma_255 must be >= 0, got {sigma_255}.")
        self.cs_ratio = cs_ratio
        self.block_size = block_size
        self.patch_blocks = patch_blocks
        self.test_size = test_size
        self.sigma_255 = sigma_255
        self.n_val = n_val
        self.seeds = {"operator": operator_seed, "train": train_seed, "val": val_seed, "test": test_seed}
        self.phi = gaussian_block_matrix(cs_ratio, block_size, seed=operator_seed)

    def config(self) -> dict[str, Any]:
        seeds = {f"{split}_seed": seed for split, seed in self.seeds.items()}
        return {
            "cs_ratio": self.cs_ratio,
            "block_size": self.block_size,
            "patch_blocks": self.patch_blocks,
            "test_size": self.test_size,
            "sigma_255": self.sigma_255,
            "n_val": self.n_val,
            **seeds,
        }

    def operator(self, shape: tuple[int, int]) -> BlockCS:
        """Return the block-CS operator for images of ``shape`` (multiples of the block size)."""
        return BlockCS(self.phi, shape)

    def _measure(self, x: Tensor, generator: torch.Generator, crop: tuple[int, int] | None = None) -> ImagingBatch:
        padded = pad_to_block_multiple(x, self.block_size)
        operator = self.operator(tuple(padded.shape[-2:]))
        noise_std = torch.full((x.shape[0],), self.sigma_255 / 255, dtype=torch.float64)
        y = operator.add_noise(operator.forward(padded), self.sigma_255 / 255, generator)
        return ImagingBatch(padded, y, operator, noise_std, crop)

    def sample(self, batch_size: int, generator: torch.Generator) -> ImagingBatch:
        patches = sample_patches(batch_size, self.patch_blocks * self.block_size, generator, split="train", dtype=torch.float64)
        return self._measure(patches, generator)

    def _evaluation_set(self, split: str, generator: torch.Generator, **degradation: Any) -> ImagingBatch:
        if degradation:
            raise ValueError(f"block_cs sets take no degradation overrides, got {sorted(degradation)}.")
        if split == "val":
            patches = sample_patches(self.n_val, self.patch_blocks * self.block_size, generator, split="train", dtype=torch.float64)
            return self._measure(patches, generator)
        images = test_images(self.test_size, dtype=torch.float64)
        padded = self.test_size % self.block_size != 0
        return self._measure(images, generator, crop=(self.test_size, self.test_size) if padded else None)


class InpaintingTask(ImagingTask):
    r"""Inpainting with random missing pixels and noise: :math:`y = m \odot (x + w)`, optional outliers.

    Args:
        observed_ratio: fraction of observed pixels, or an interval [lo, hi] drawn uniformly per
            training image.
        sigma_255: Gaussian noise standard deviation on the 0–255 scale, or an interval.
        outlier_fraction: fraction of pixels replaced by salt-and-pepper outliers (0 or 1) before
            masking; 0 disables them.
        patch_size: side of the training patches.
        test_size: side of the test images.
        test_observed_ratio, test_sigma_255: the degradation of the validation and test sets;
            default to the middle of the training intervals.
        n_val: number of validation patches (from the training images, ``val_seed``).
    """

    name = "inpainting"

    def __init__(
        self,
        observed_ratio: float | list[float] = 0.5,
        sigma_255: float | list[float] = 15.0,
        outlier_fraction: float = 0.0,
        patch_size: int = 64,
        test_size: int = 256,
        test_observed_ratio: float | None = None,
        test_sigma_255: float | None = None,
        n_val: int = 32,
        train_seed: int = 1,
        val_seed: int = 2,
        test_seed: int = 3,
    ) -> None:
        self.observed_range = _range(observed_ratio, "observed_ratio", 0.0, 1.0)
        if self.observed_range[0] <= 0:
            raise ValueError(f"observed_ratio must be > 0 (at least one observed pixel), got {observed_ratio}.")
        self.sigma_range = _range(sigma_255, "sigma_255", 0.0, 255.0)
        if not 0.0 <= outlier_fraction < 1.0:
            raise ValueError(f"outlier_fraction must lie in [0, 1), got {outlier_fraction}.")
        self.observed_ratio = observed_ratio
        self.sigma_255 = sigma_255
        self.outlier_fraction = outlier_fraction
        self.patch_size = patch_size
        self.test_size = test_size
        # The arguments as given (None included), so that spec() rebuilds the task from the same config.
        self.test_setting = {"test_observed_ratio": test_observed_ratio, "test_sigma_255": test_sigma_255}
        self.test_observed_ratio = test_observed_ratio if test_observed_ratio is not None else sum(self.observed_range) / 2
        self.test_sigma_255 = test_sigma_255 if test_sigma_255 is not None else sum(self.sigma_range) / 2
        self.n_val = n_val
        self.seeds = {"train": train_seed, "val": val_seed, "test": test_seed}

    def config(self) -> dict[str, Any]:
        def plain(value):
            return list(value) if isinstance(value, (list, tuple)) else value

        return {
            "observed_ratio": plain(self.observed_ratio),
            "sigma_255": plain(self.sigma_255),
            "outlier_fraction": self.outlier_fraction,
            "patch_size": self.patch_size,
            "test_size": self.test_size,
            **self.test_setting,
            "n_val": self.n_val,
            **{f"{split}_seed": seed for split, seed in self.seeds.items()},
        }

    def degrade(self, x: Tensor, observed_ratios: Tensor, sigmas_255: Tensor, generator: torch.Generator) -> ImagingBatch:
        """Mask and corrupt the images ``x`` (N, H, W), one observed ratio and noise level per image."""
        masks = torch.stack(
            [random_pixel_mask(tuple(x.shape[-2:]), float(ratio), generator).to(x.dtype) for ratio in observed_ratios]
        )
        operator = PixelMask(masks)
        noise_std = sigmas_255.to(x.dtype) / 255
        corrupted = x
        if self.outlier_fraction > 0:
            corrupted = add_salt_and_pepper(x, self.outlier_fraction, generator)
        y = operator.add_noise(operator.forward(corrupted), noise_std[:, None, None], generator)
        return ImagingBatch(x, y, operator, noise_std)

    def sample(self, batch_size: int, generator: torch.Generator) -> ImagingBatch:
        patches = sample_patches(batch_size, self.patch_size, generator, split="train", dtype=torch.float64)
        ratios = _uniform(self.observed_range, batch_size, generator)
        sigmas = _uniform(self.sigma_range, batch_size, generator)
        return self.degrade(patches, ratios, sigmas, generator)

    def _evaluation_set(
        self, split: str, generator: torch.Generator, observed_ratio: float | None = None, sigma_255: float | None = None
    ) -> ImagingBatch:
        ratio = self.test_observed_ratio if observed_ratio is None else observed_ratio
        sigma = self.test_sigma_255 if sigma_255 is None else sigma_255
        if split == "val":
            x = sample_patches(self.n_val, self.patch_size, generator, split="train", dtype=torch.float64)
        else:
            x = test_images(self.test_size, dtype=torch.float64)
        n = x.shape[0]
        return self.degrade(x, torch.full((n,), float(ratio)), torch.full((n,), float(sigma), dtype=torch.float64), generator)


class MRITask(ImagingTask):
    r"""Compressed-sensing MRI of real slices: :math:`y = M \mathcal F x + w` with a fixed k-space mask.

    One mask, drawn from ``mask_seed``, serves every image, as in ADMM-Net's experiments. The
    slices are magnitude images in [0, 1] treated as complex images with zero phase; estimates are
    scored by their modulus.

    Args:
        observed_ratio: fraction of k-space sampled.
        sampling: ``"cartesian"`` (whole phase-encoding lines) or ``"random"`` (single points).
        center_fraction: fraction of lines (Cartesian) or of k-space (random) always sampled at the
            lowest frequencies.
        sigma_255: complex Gaussian noise standard deviation in k-space, on the 0–255 scale of the image.
        n_val: validation images, drawn from the training slices with ``val_seed``.
    """

    name = "mri"
    complex_domain = True
    SAMPLINGS = ("cartesian", "random")

    def __init__(
        self,
        observed_ratio: float = 0.25,
        sampling: str = "cartesian",
        center_fraction: float = 0.08,
        sigma_255: float = 0.0,
        n_val: int = 8,
        mask_seed: int = 0,
        train_seed: int = 1,
        val_seed: int = 2,
        test_seed: int = 3,
    ) -> None:
        if sampling not in self.SAMPLINGS:
            raise ValueError(f"sampling must be one of {self.SAMPLINGS}, got {sampling!r}.")
        if sigma_255 < 0:
            raise ValueError(f"sigma_255 must be >= 0, got {sigma_255}.")
        self.observed_ratio = observed_ratio
        self.sampling = sampling
        self.center_fraction = center_fraction
        self.sigma_255 = sigma_255
        self.n_val = n_val
        self.seeds = {"mask": mask_seed, "train": train_seed, "val": val_seed, "test": test_seed}
        self.train_slices = mri_slices("train", dtype=torch.float64)
        self.test_slices = mri_slices("test", dtype=torch.float64)

    def config(self) -> dict[str, Any]:
        return {
            "observed_ratio": self.observed_ratio,
            "sampling": self.sampling,
            "center_fraction": self.center_fraction,
            "sigma_255": self.sigma_255,
            "n_val": self.n_val,
            **{f"{split}_seed": seed for split, seed in self.seeds.items()},
        }

    def operator(self, shape: tuple[int, int]) -> MaskedFourier:
        """Return the undersampled Fourier operator for images of ``shape``, its mask drawn from ``mask_seed``."""
        make_mask = cartesian_mask if self.sampling == "cartesian" else random_mask
        mask = make_mask(shape, self.observed_ratio, seeded_generator(self.seeds["mask"], *shape), self.center_fraction)
        return MaskedFourier(mask.double())

    def _measure(self, x: Tensor, generator: torch.Generator) -> ImagingBatch:
        operator = self.operator(tuple(x.shape[-2:]))
        noise_std = torch.full((x.shape[0],), self.sigma_255 / 255, dtype=torch.float64)
        y = operator.add_noise(operator.forward(x.to(torch.complex128)), self.sigma_255 / 255, generator)
        return ImagingBatch(x, y, operator, noise_std)

    def sample(self, batch_size: int, generator: torch.Generator) -> ImagingBatch:
        index = torch.randint(self.train_slices.shape[0], (batch_size,), generator=generator)
        x = self.train_slices[index]
        # Flips keep the image statistics of MR slices and multiply the few training slices by four.
        flips = torch.rand(batch_size, 2, generator=generator) < 0.5
        x = torch.stack([image.flip(dims) if dims else image for image, dims in zip(x, _flip_dims(flips))])
        return self._measure(x, generator)

    def _evaluation_set(self, split: str, generator: torch.Generator, **degradation: Any) -> ImagingBatch:
        if degradation:
            raise ValueError(f"mri sets take no degradation overrides, got {sorted(degradation)}.")
        if split == "val":
            index = torch.randperm(self.train_slices.shape[0], generator=generator)[: self.n_val]
            return self._measure(self.train_slices[index], generator)
        return self._measure(self.test_slices, generator)

    def dicom_set(self) -> ImagingBatch:
        """Return pydicom's 64 × 64 MR image, measured with this task's sampling (test only)."""
        image = dicom_mr_image(dtype=torch.float64)[None]
        return self._measure(image, seeded_generator(self.seeds["test"], 1))


def _flip_dims(flips: Tensor) -> list[tuple[int, ...]]:
    return [tuple(dim for dim, flip in zip((-2, -1), row) if flip) for row in flips.tolist()]


IMAGING_TASKS: dict[str, type[ImagingTask]] = {task.name: task for task in (BlockCSTask, InpaintingTask, MRITask)}


def build_imaging_task(spec: dict[str, Any]) -> ImagingTask:
    """Rebuild a task from its :meth:`ImagingTask.spec`; only the names in :data:`IMAGING_TASKS` are accepted."""
    spec = dict(spec)
    name = spec.pop("name", None)
    if name not in IMAGING_TASKS:
        raise ValueError(f"unknown imaging task {name!r}; expected one of {sorted(IMAGING_TASKS)}.")
    return IMAGING_TASKS[name](**spec)


def psnr_crop(batch: ImagingBatch, estimate: Tensor) -> tuple[Tensor, Tensor]:
    """Return the (estimate, ground truth) pair to score: moduli, cropped to ``batch.crop``."""
    estimate = magnitude(estimate)
    target = batch.x
    if batch.crop is not None:
        height, width = batch.crop
        estimate = estimate[..., :height, :width]
        target = target[..., :height, :width]
    return estimate, target


__all__ = [
    "IMAGING_TASKS",
    "BlockCSTask",
    "ImagingBatch",
    "ImagingTask",
    "InpaintingTask",
    "MRITask",
    "build_imaging_task",
    "magnitude",
    "psnr_crop",
]
