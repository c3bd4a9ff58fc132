r"""Missing and noisy pixels: random masks, Gaussian and salt-and-pepper noise, and input checks.

Conventions shared by every function here:

* Images are gray values on the [0, 1] scale, of shape (H, W) or with leading batch dimensions
  (..., H, W). The last two dimensions are one image. :func:`check_image_range` rejects values
  outside the range, so 8-bit images must be divided by 255 first.
* Noise levels are given as ``sigma_255``, the standard deviation on the 0–255 scale that denoising
  and inpainting papers report (σ = 15, 25, 50). The noise added to [0, 1] images has standard
  deviation ``sigma_255 / 255``.
* ``mask`` is 1 where a pixel is observed and 0 where it is missing, so the inpainting measurement is
  :math:`y = M \odot (x + w)`, exactly 0 at every missing pixel.
* Randomness comes only from the ``generator`` argument, so a seeded generator gives the same
  degradation on every run. Random numbers are drawn on the generator's device and moved to the
  image's device.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def check_image_range(x: Tensor, low: float = 0.0, high: float = 1.0, name: str = "image") -> None:
    """Raise ``ValueError`` unless every value of ``x`` is finite and lies in [``low``, ``high``].

    The message names the minimum and maximum found and the expected range. Values up to 255 suggest
    an 8-bit image, so the message suggests dividing by 255.
    """
    if x.numel() == 0:
        return
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values. Expected finite values in [{low}, {high}].")

    minimum = float(x.min())
    maximum = float(x.max())
    if minimum >= low and maximum <= high:
        return
    message = f"{name} has values in [{minimum:.6g}, {maximum:.6g}], outside the expected range [{low}, {high}]."
    if maximum > high and maximum <= 255 and minimum >= 0:
        message += " It looks like an 8-bit image: divide it by 255 first."
    raise ValueError(message)


def check_mask_shape(mask: Tensor, image: Tensor) -> None:
    """Raise ``ValueError`` naming both shapes unless ``mask`` broadcasts to the shape of ``image`` without enlarging it."""
    try:
        broadcast = torch.broadcast_shapes(mask.shape, image.shape)
    except RuntimeError:
        broadcast = None
    if broadcast != image.shape:
        raise ValueError(
            f"mask of shape {tuple(mask.shape)} does not match image of shape {tuple(image.shape)}. "
            "The mask must have the image's shape or broadcast to it (for example one (H, W) mask for a batch)."
        )


def _check_image_shape(shape: tuple[int, ...], name: str) -> None:
    if len(shape) < 2:
        raise ValueError(f"{name} must have at least two dimensions (..., H, W), got shape {tuple(shape)}.")


def _exact_count(ratio: float, n_pixels: int) -> int:
    """Number of selected pixels per image: ``ratio · n_pixels`` rounded to the nearest integer, ties to even."""
    return round(ratio * n_pixels)


def _random_selection(shape: tuple[int, ...], count: int, generator: torch.Generator) -> Tensor:
    """Boolean tensor of ``shape`` with exactly ``count`` True entries per image, uniform among all such sets."""
    *batch, height, width = shape
    n_images = math.prod(batch)
    scores = torch.rand(n_images, height * width, generator=generator, device=generator.device)
    chosen = scores.argsort(dim=1)[:, :count]
    selection = torch.zeros(n_images, height * width, dtype=torch.bool, device=generator.device)
    selection.scatter_(1, chosen, True)
    return selection.reshape(shape)


def random_pixel_mask(
    shape: tuple[int, ...] | torch.Size,
    observed_ratio: float,
    generator: torch.Generator,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Draw a random inpainting mask of ``shape`` (..., H, W) with 1 at observed pixels and 0 at missing ones.

    Every image (last two dimensions) has exactly ``round(observed_ratio · H · W)`` observed pixels
    (Python's ``round``: nearest integer, ties to even), placed uniformly at random. The mask is on the
    generator's device.

    Raises:
        ValueError: ``observed_ratio`` outside (0, 1], a shape with fewer than two dimensions, or a
            ratio so small that no pixel would be observed.
    """
    shape = tuple(shape)
    _check_image_shape(shape, "shape")
    if not 0 < observed_ratio <= 1:
        raise ValueError(f"observed_ratio must be in (0, 1], got {observed_ratio}.")
    n_pixels = shape[-2] * shape[-1]
    count = _exact_count(observed_ratio, n_pixels)
    if count == 0:
        raise ValueError(f"observed_ratio={observed_ratio} observes no pixel of a {shape[-2]} x {shape[-1]} image. Use at least {0.5 / n_pixels:.3g}.")
    return _random_selection(shape, count, generator).to(dtype)


def add_gaussian_noise(x: Tensor, sigma_255: float, generator: torch.Generator, mask: Tensor | None = None) -> Tensor:
    r"""Return :math:`x + (\sigma_{255}/255)\,w` with :math:`w \sim \mathcal N(0, I)`, in the dtype of ``x``.

    With ``mask``, the noise is multiplied by ``mask != 0``, so the result equals ``x`` where the mask
    is 0 and a masked image stays exactly 0 at missing pixels. The result is not clipped to [0, 1].

    Raises:
        ValueError: ``sigma_255`` negative or not finite, ``x`` outside [0, 1], or a mask whose
            shape does not broadcast to ``x``.
    """
    if not (math.isfinite(sigma_255) and sigma_255 >= 0):
        raise ValueError(f"sigma_255 must be a finite standard deviation >= 0 on the 0-255 scale, got {sigma_255}.")
    check_image_range(x, name="x")
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=generator.device).to(x.device)
    noise = noise * (sigma_255 / 255.0)
    if mask is not None:
        check_mask_shape(mask, x)
        noise = noise * (mask != 0)
    return x + noise


def add_salt_and_pepper(x: Tensor, fraction: float, generator: torch.Generator, low: float = 0.0, high: float = 1.0) -> Tensor:
    """Return a copy of ``x`` in which a random ``fraction`` of the pixels of each image is set to ``low`` or ``high``.

    Each image (last two dimensions) gets exactly ``round(fraction · H · W)`` corrupted pixels, placed
    uniformly at random. Each corrupted pixel independently becomes ``low`` (pepper) or ``high`` (salt)
    with probability 1/2.

    Raises:
        ValueError: ``fraction`` outside [0, 1], ``low`` >= ``high``, or ``x`` outside [``low``, ``high``].
    """
    if not 0 <= fraction <= 1:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}.")
    if not low < high:
        raise ValueError(f"low must be smaller than high, got low={low}, high={high}.")
    _check_image_shape(tuple(x.shape), "x")
    check_image_range(x, low, high, name="x")

    count = _exact_count(fraction, x.shape[-2] * x.shape[-1])
    corrupted = _random_selection(tuple(x.shape), count, generator).to(x.device)
    salt = torch.rand(x.shape, generator=generator, device=generator.device).to(x.device) < 0.5
    values = torch.where(salt, torch.full_like(x, high), torch.full_like(x, low))
    return torch.where(corrupted, values, x)


def observe_inpainting(x: Tensor, observed_ratio: float, sigma_255: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    r"""Simulate noisy inpainting measurements :math:`y = M \odot (x + w)`, :math:`w \sim \mathcal N(0, (\sigma_{255}/255)^2 I)`.

    The mask is drawn first (:func:`random_pixel_mask`, exact count per image), then the noise, both
    from ``generator``.

    Args:
        x: clean images in [0, 1], shape (..., H, W).
        observed_ratio: fraction of observed pixels per image, in (0, 1].
        sigma_255: noise standard deviation on the 0–255 scale, >= 0.
        generator: source of the mask and the noise.

    Returns:
        ``(y, mask)``, both of the shape and dtype of ``x``. ``y`` is exactly 0 (not -0.0) where
        ``mask`` is 0, and the mask is 1 at observed pixels.
    """
    check_image_range(x, name="x")
    _check_image_shape(tuple(x.shape), "x")
    mask = random_pixel_mask(x.shape, observed_ratio, generator, dtype=x.dtype).to(x.device)
    noisy = add_gaussian_noise(x, sigma_255, generator, mask=mask)
    y = torch.where(mask != 0, noisy, torch.zeros_like(noisy))
    return y, mask
