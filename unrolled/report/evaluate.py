"""Test-set metrics and forward-pass timing of unrolled networks, layer by layer."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch
from torch import Tensor

from unrolled.layers import UnrolledISTA
from unrolled.metrics import nmse_db, nmse_db_per_sample, psnr_db
from unrolled.problems import Problem


@dataclass
class LayerMetrics:
    """Test metrics of the estimate after ``n_layers`` layers (``psnr_db`` None without a signal range)."""

    n_layers: int
    nmse_db: float
    nmse_db_per_sample: float
    psnr_db: float | None


def signal_range_of(problem: Problem) -> float | None:
    """Return the problem's ``signal_range`` attribute (peak-to-peak range of ``problem.signal``), or None.

    A problem that sets it, for example ``signal_range = 1.0`` for images in [0, 1], gets PSNR columns.
    """
    value = getattr(problem, "signal_range", None)
    if value is None:
        return None
    if not value > 0:
        raise ValueError(f"{type(problem).__name__}.signal_range must be a positive number or None, got {value!r}.")
    return float(value)


def signal_psnr_db(problem: Problem, x_hat: Tensor, x: Tensor, signal_range: float) -> float:
    """PSNR in dB of ``problem.signal(x_hat)`` against ``problem.signal(x)``, from the MSE over the whole set.

    Both codes are moved to the CPU in float64 before the synthesis.
    """
    signal_hat = problem.signal(x_hat.to("cpu", torch.float64))
    signal = problem.signal(x.to("cpu", torch.float64))
    return float(psnr_db(signal_hat, signal, data_range=signal_range))


def evaluate_layers(network: UnrolledISTA, problem: Problem, y: Tensor, x: Tensor) -> list[LayerMetrics]:
    """Run ``network`` once on the whole set and measure every layer's estimate against ``x``.

    ``y`` is cast to the network's dtype and device (the dtype of its operator buffer ``A``), so the
    network runs as it was trained. NMSE is computed in float64 in both conventions of
    :mod:`unrolled.metrics`, and PSNR only when the problem defines ``signal_range``.
    """
    signal_range = signal_range_of(problem)
    with torch.inference_mode():
        estimates = network(y.to(network.A.device, network.A.dtype))

    x = x.to(estimates.device)
    metrics = []
    for index, estimate in enumerate(estimates):
        psnr = signal_psnr_db(problem, estimate, x, signal_range) if signal_range is not None else None
        metrics.append(LayerMetrics(index + 1, float(nmse_db(estimate, x)), float(nmse_db_per_sample(estimate, x)), psnr))
    return metrics


def time_forward(network: UnrolledISTA, y: Tensor, n_layers: int, repeats: int) -> float:
    """Return the median wall-clock in seconds of ``network(y, n_layers=n_layers)`` over ``repeats`` calls.

    One untimed call comes first (memory allocation, kernel selection). ``y`` must already have the
    network's dtype and device. On CUDA each call is timed up to a device synchronisation.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}.")
    device = network.A.device
    durations = []
    with torch.inference_mode():
        for repeat in range(repeats + 1):
            start = time.perf_counter()
            network(y, n_layers=n_layers)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if repeat > 0:
                durations.append(time.perf_counter() - start)
    return statistics.median(durations)
