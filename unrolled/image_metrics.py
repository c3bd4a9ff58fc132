r"""Image quality per image: PSNR and SSIM through torchmetrics' functional API, and their means over a test set.

Both functions take a batch of images of shape (N, H, W) or (N, C, H, W) and return N float64 values,
one per image. Inputs are cast to float64 first. Image reconstruction papers report these per-image
values and their mean over a test set such as Set11.

* PSNR: :math:`10\log_{10}(\text{data\_range}^2 / \text{MSE})`, with the MSE over all pixels and
  channels of one image (``torchmetrics.functional.image.peak_signal_noise_ratio``, ``reduction="none"``).
  Identical images give ``inf``. torchmetrics 1.9 converts to decibels with the float32 constant
  :math:`10/\ln 10`, so values differ from the float64 closed form by about 1e-6 dB.
* SSIM (Wang, Bovik, Sheikh, Simoncelli, "Image quality assessment: from error visibility to
  structural similarity", IEEE Trans. Image Process., 2004): the Gaussian-window form with σ = 1.5,
  an 11 × 11 window, :math:`K_1 = 0.01`, :math:`K_2 = 0.03` and population (not sample) covariances.
  The SSIM map comes from ``torchmetrics.functional.image.structural_similarity_index_measure`` with
  ``return_full_image=True``. Its mean is taken only over the windows that lie inside the image,
  so the 5 pixels along each border are not window centres. This is the convention of
  ``skimage.metrics.structural_similarity(..., gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False)``, which it matches to about 1e-14 in float64. torchmetrics' own mean
  also averages the border windows, which it fills by reflecting the image. That mean is a different
  number: on the eight 256 × 256 test images with noise of standard deviation 0.05 it differs from
  scikit-image by up to 0.012, and on 64 × 64 crops by up to 0.043.

Clipping: with ``clip=True`` (the default) the estimate is clamped to [0, ``data_range``] before it is
measured, as an estimate is clipped when it is saved as an 8-bit image. The ISTA-Net authors' test
script (``TEST_CS_ISTA_Net_plus.py`` in github.com/jianzhangcs/ISTA-Net-PyTorch) does the same: it
clips reconstructions to [0, 1] before it computes PSNR on the 0–255 scale. Use ``clip=False`` to
measure the raw network output. The target must already lie in [0, ``data_range``].

NOTE: that script computes SSIM with scikit-image's defaults (a uniform 7 × 7 window and sample
covariances), so its SSIM values are not comparable with the Gaussian-window SSIM here.

For the mean over a test set use :class:`MeanPSNR` and :class:`MeanSSIM`: they accumulate the
per-image values over batches and devices and return their mean, the number in reconstruction tables.
torchmetrics' ``PeakSignalNoiseRatio`` with ``dim=None`` instead returns the PSNR of the MSE pooled over
all images, a different number.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from unrolled.degradations import check_image_range

SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def _prepare(estimate: Tensor, target: Tensor, data_range: float, clip: bool) -> tuple[Tensor, Tensor]:
    """Validate a pair of image batches and return them as float64 (N, C, H, W), with the estimate clamped when ``clip``."""
    if estimate.shape != target.shape:
        raise ValueError(f"estimate and target must have the same shape, got {tuple(estimate.shape)} and {tuple(target.shape)}.")
    if target.ndim not in (3, 4):
        raise ValueError(f"expected images of shape (N, H, W) or (N, C, H, W), got shape {tuple(target.shape)}. Add a batch dimension with x[None].")
    if not data_range > 0:
        raise ValueError(f"data_range must be > 0, got {data_range}.")
    check_image_range(target, 0.0, data_range, name="target")

    estimate = estimate.to(torch.float64)
    target = target.to(torch.float64)
    if clip:
        estimate = estimate.clamp(0.0, data_range)
    if target.ndim == 3:
        estimate = estimate.unsqueeze(1)
        target = target.unsqueeze(1)
    return estimate, target


def psnr(estimate: Tensor, target: Tensor, data_range: float = 1.0, clip: bool = True) -> Tensor:
    r"""Return the PSNR in dB of each image, :math:`10\log_{10}(\text{data\_range}^2/\text{MSE}_i)`, float64 (N,).

    Args:
        estimate: reconstructed images, (N, H, W) or (N, C, H, W).
        target: reference images of the same shape, in [0, ``data_range``].
        data_range: peak-to-peak range of the images, 1 for gray values in [0, 1].
        clip: clamp ``estimate`` to [0, ``data_range``] first.

    Raises:
        ValueError: shapes differ or are not 3-D or 4-D, ``data_range`` <= 0, or ``target`` lies
            outside [0, ``data_range``].
    """
    estimate, target = _prepare(estimate, target, data_range, clip)
    return peak_signal_noise_ratio(estimate, target, data_range=float(data_range), reduction="none", dim=(1, 2, 3))


def ssim(estimate: Tensor, target: Tensor, data_range: float = 1.0, clip: bool = True) -> Tensor:
    """Return the SSIM of each image (Gaussian window σ = 1.5, 11 × 11, averaged over channels), float64 (N,).

    Images need both sides >= 11, the window size. Arguments and errors are those of :func:`psnr`.
    """
    estimate, target = _prepare(estimate, target, data_range, clip)
    window = 2 * int(3.5 * SSIM_SIGMA + 0.5) + 1
    if min(target.shape[-2:]) < window:
        raise ValueError(f"SSIM needs images of at least {window} x {window} pixels (its Gaussian window), got {tuple(target.shape[-2:])}.")
    _, ssim_map = structural_similarity_index_measure(
        estimate,
        target,
        gaussian_kernel=True,
        sigma=SSIM_SIGMA,
        kernel_size=window,
        reduction="none",
        data_range=float(data_range),
        k1=SSIM_K1,
        k2=SSIM_K2,
        return_full_image=True,
    )
    # Keep only the centres of windows that lie entirely inside the image (see the module docstring).
    border = window // 2
    return ssim_map[..., border:-border, border:-border].mean(dim=(1, 2, 3))


class _MeanPerImage(Metric):
    """Mean over all images seen of a per-image value, kept as a float64 sum and a count."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, data_range: float = 1.0, clip: bool = True, **kwargs) -> None:
        super().__init__(**kwargs)
        if not data_range > 0:
            raise ValueError(f"data_range must be > 0, got {data_range}.")
        self.data_range = data_range
        self.clip = clip
        self.add_state("value_sum", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("n_images", default=torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")

    def _per_image(self, estimate: Tensor, target: Tensor) -> Tensor:
        raise NotImplementedError

    def update(self, estimate: Tensor, target: Tensor) -> None:
        values = self._per_image(estimate, target)
        self.value_sum += values.sum()
        self.n_images += values.numel()

    def compute(self) -> Tensor:
        if self.n_images == 0:
            raise RuntimeError(f"{type(self).__name__}.compute() was called before any update(). Pass at least one batch of images.")
        return self.value_sum / self.n_images


class MeanPSNR(_MeanPerImage):
    """Mean over images of the per-image PSNR in dB (:func:`psnr`), accumulated over batches and devices.

    ``update(estimate, target)`` takes (N, H, W) or (N, C, H, W) batches, and ``compute()`` returns a
    float64 scalar. ``data_range`` and ``clip`` are those of :func:`psnr`. An exact reconstruction
    makes the mean ``inf``.
    """

    def _per_image(self, estimate: Tensor, target: Tensor) -> Tensor:
        return psnr(estimate, target, self.data_range, self.clip)


class MeanSSIM(_MeanPerImage):
    """Mean over images of the per-image SSIM (:func:`ssim`), accumulated over batches and devices.

    ``update`` and ``compute`` work as in :class:`MeanPSNR`.
    """

    def _per_image(self, estimate: Tensor, target: Tensor) -> Tensor:
        return ssim(estimate, target, self.data_range, self.clip)
