r"""Reconstruction metrics: plain functions and the torchmetrics classes built on them.

NMSE is reported in dB in two conventions, always named:

* aggregate (LISTA-CP / LISTA-CPSS papers): :math:`10\log_{10}(\sum_i\|\hat x_i - x_i\|^2 / \sum_i\|x_i\|^2)`;
* per-sample mean (Open-L2O benchmark): :math:`\frac1N\sum_i 10\log_{10}(\|\hat x_i - x_i\|^2 / \|x_i\|^2)`.

Samples are the last dimension; everything before it is a batch. Sums are taken in float64.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

# Floor for the per-sample ratio so that an exact reconstruction gives a finite dB value (-300 dB)
# instead of -inf, which would make every mean over samples -inf.
_MIN_RATIO = 1e-30


def _to_double(x: Tensor) -> Tensor:
    """Cast to float64, or to complex128 for complex input, whose imaginary part a float64 cast would drop."""
    return x.to(torch.complex128 if x.is_complex() else torch.float64)


def squared_errors(x_hat: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    """Return per-sample ``‖x̂ − x‖²`` and ``‖x‖²`` in float64, reduced over the last dimension."""
    if x_hat.shape != x.shape:
        raise ValueError(f"x_hat and x must have the same shape, got {tuple(x_hat.shape)} and {tuple(x.shape)}.")
    error = (_to_double(x_hat) - _to_double(x)).abs().square().sum(-1)
    reference = _to_double(x).abs().square().sum(-1)
    return error, reference


def ratio_db(error: Tensor, reference: Tensor) -> Tensor:
    """Elementwise ``10·log10(error / reference)``, floored at -300 dB for exact reconstructions."""
    return 10 * torch.log10((error / reference).clamp_min(_MIN_RATIO))


def nmse_db(x_hat: Tensor, x: Tensor) -> Tensor:
    """NMSE in dB of the aggregate ratio ``Σ‖x̂ − x‖² / Σ‖x‖²`` over all samples (float64 scalar)."""
    error, reference = squared_errors(x_hat, x)
    return ratio_db(error.sum(), reference.sum())


def nmse_db_per_sample(x_hat: Tensor, x: Tensor) -> Tensor:
    """Mean over samples of the per-sample NMSE in dB (float64 scalar)."""
    error, reference = squared_errors(x_hat, x)
    return ratio_db(error, reference).mean()


def psnr_db(image_hat: Tensor, image: Tensor, data_range: float = 1.0) -> Tensor:
    r"""PSNR in dB of the aggregate mean squared error, :math:`10\log_{10}(\text{range}^2/\text{MSE})`."""
    mse = (image_hat.to(torch.float64) - image.to(torch.float64)).square().mean()
    return -ratio_db(mse, torch.tensor(data_range**2, dtype=torch.float64))


class LayerwiseNMSE(Metric):
    r"""NMSE in dB of every layer of an unrolled network, in both conventions, accumulated over batches.

    ``update(x_hats, x)`` takes the stacked layer outputs of shape (n_layers, batch, n) and the
    target of shape (batch, n). ``compute()`` returns a dict of float64 tensors of shape (n_layers,):
    ``"nmse_db"`` (aggregate ratio) and ``"nmse_db_per_sample"`` (mean of per-sample dB values).
    States are sums, so the result is the same however the data are split into batches or ranks.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, n_layers: int, **kwargs) -> None:
        super().__init__(**kwargs)
        if n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {n_layers}.")
        self.n_layers = n_layers
        zeros = torch.zeros(n_layers, dtype=torch.float64)
        self.add_state("error_sum", default=zeros.clone(), dist_reduce_fx="sum")
        self.add_state("sample_db_sum", default=zeros.clone(), dist_reduce_fx="sum")
        self.add_state("reference_sum", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("n_samples", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, x_hats: Tensor, x: Tensor) -> None:
        if x_hats.ndim != x.ndim + 1 or x_hats.shape[0] != self.n_layers or x_hats.shape[1:] != x.shape:
            raise ValueError(
                f"expected x_hats of shape ({self.n_layers}, *{tuple(x.shape)}) for a target of shape "
                f"{tuple(x.shape)}, got {tuple(x_hats.shape)}."
            )
        # One layer at a time, so that the float64 copies take the memory of one layer's estimates, not of all.
        reference = _to_double(x).abs().square().sum(-1)
        for k, x_hat in enumerate(x_hats):
            error = squared_errors(x_hat, x)[0]
            self.error_sum[k] += error.sum()
            self.sample_db_sum[k] += ratio_db(error, reference).sum()
        self.reference_sum += reference.sum()
        self.n_samples += reference.numel()

    def compute(self) -> dict[str, Tensor]:
        return {
            "nmse_db": ratio_db(self.error_sum, self.reference_sum),
            "nmse_db_per_sample": self.sample_db_sum / self.n_samples,
        }
