"""Test-set metrics and forward-pass timing of unrolled networks, layer by layer."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch
from torch import Tensor

from unrolled.layers import UnrolledISTA
from unrolled.metrics import psnr_db, ratio_db, squared_errors
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


# Estimates of all layers held at once by evaluate_layers: 2**24 numbers are 128 MiB in float64.
EVALUATION_ELEMENTS = 2**24


def evaluate_layers(network: UnrolledISTA, problem: Problem, y: Tensor, x: Tensor) -> list[LayerMetrics]:
    """Run ``network`` on the set and measure every layer's estimate against ``x``.

    ``y`` is cast to the network's dtype and device (the dtype of its operator buffer ``A``), so the
    network runs as it was trained. NMSE is computed in float64 in both conventions of
    :mod:`unrolled.metrics`, and PSNR only when the problem defines ``signal_range``. The samples
    go through the network in chunks whose stacked estimates of all layers hold at most
    :data:`EVALUATION_ELEMENTS` numbers, so memory stays bounded on large problems; the metrics
    are sums over samples, so the chunks do not change them.
    """
    signal_range = signal_range_of(problem)
    n_layers = network.n_layers
    chunk_size = max(1, EVALUATION_ELEMENTS // (n_layers * x.shape[-1]))
    errors, references = [], []
    signal_error_sums = torch.zeros(n_layers, dtype=torch.float64)
    signal_count = 0
    for start in range(0, y.shape[0], chunk_size):
        y_chunk, x_chunk = y[start:start + chunk_size], x[start:start + chunk_size]
        with torch.inference_mode():
            estimates = network(y_chunk.to(network.A.device, network.A.dtype))
        x_chunk = x_chunk.to(estimates.device)
        chunk_errors = []
        for estimate in estimates:
            error, reference = squared_errors(estimate, x_chunk)
            chunk_errors.append(error.cpu())
        errors.append(torch.stack(chunk_errors))
        references.append(reference.cpu())
        if signal_range is not None:
            signal = problem.signal(x_chunk.to("cpu", torch.float64))
            for k, estimate in enumerate(estimates):
                signal_error_sums[k] += (problem.signal(estimate.to("cpu", torch.float64)) - signal).square().sum()
            signal_count += signal.numel()
    error, reference = torch.cat(errors, dim=1), torch.cat(references)

    metrics = []
    for k in range(n_layers):
        psnr = None
        if signal_range is not None:
            psnr = float(-ratio_db(signal_error_sums[k] / signal_count, torch.tensor(signal_range**2, dtype=torch.float64)))
        metrics.append(LayerMetrics(
            k + 1, float(ratio_db(error[k].sum(), reference.sum())), float(ratio_db(error[k], reference).mean()), psnr
        ))
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
