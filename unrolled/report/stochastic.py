r"""Unrolled stochastic networks against their classical method: suboptimality per layer and per step, and the steps needed.

The classical method is the same update with a constant step :math:`s/L_b` and no momentum: the
network classes with every scale equal to s, where SVRG takes a new snapshot every n/b steps (one
epoch), as :func:`unrolled.solvers.svrg.svrg` does. It runs on the same held-out instances, with
its own seeded draws, for a grid of scales s. The steps it needs to reach a suboptimality are the
fewest over the grid, so the comparison is with the classical method tuned for each target.
"""

from __future__ import annotations

import io
import math
from typing import Any

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor

from unrolled.layers.variance_reduced import UnrolledSVRG, UnrolledVarianceReduced
from unrolled.problems.finite_sum_batch import FiniteSumBatch

DEFAULT_STEP_SCALES = (0.0625, 0.125, 0.25, 0.5, 1.0, 1.5, 1.99)


def median_suboptimality(instances: FiniteSumBatch, W: Tensor, f_star: Tensor) -> float:
    """Return the median over instances of F(W) - F* (the mean of the two middle values for an even count)."""
    return float(torch.quantile((instances.objectives(W) - f_star).clamp_min(0.0), 0.5))


@torch.no_grad()
def classical_median_curve(
    network_class: type[UnrolledVarianceReduced],
    instances: FiniteSumBatch,
    f_star: Tensor,
    *,
    batch_size: int,
    step_scale: float,
    max_steps: int,
    record_every: int,
    generator: torch.Generator,
) -> list[float]:
    """Return the median suboptimality over the instances after 0, r, 2r, ... steps of the classical method (r = ``record_every``)."""
    kwargs: dict[str, Any] = {"batch_size": batch_size, "step_scale": step_scale}
    if issubclass(network_class, UnrolledSVRG):
        kwargs["snapshot_every"] = max(1, instances.n_samples // batch_size)
    method = network_class(max_steps, **kwargs).double()
    iterates = method(instances, index=method.draw(instances, generator))
    return [median_suboptimality(instances, W, f_star) for W in iterates[::record_every]]


def steps_to_reach(targets: list[float], curves: dict[float, list[float]], record_every: int) -> list[int | None]:
    """Return, for each target, the fewest recorded steps at which any curve is at or below it (None if none is)."""
    needed: list[int | None] = []
    for target in targets:
        reached = [record_every * next((i for i, value in enumerate(curve) if value <= target), math.inf) for curve in curves.values()]
        best = min(reached)
        needed.append(None if best == math.inf else int(best))
    return needed


def compare_with_classical(
    network: UnrolledVarianceReduced,
    instances: FiniteSumBatch,
    f_star: Tensor,
    layer_medians: list[float],
    *,
    max_steps: int,
    generator_seed: int,
    step_scales: tuple[float, ...] = DEFAULT_STEP_SCALES,
) -> dict[str, Any]:
    """Run the classical method over the grid of scales and return its curves and the steps it needs for each layer's median.

    Returns ``step_scales``, ``curves`` (median suboptimality every ``record_every`` steps, per
    scale), ``record_every``, ``steps_needed`` (per layer k = 1..K; None where the budget of
    ``max_steps`` did not reach it) and ``ratio`` (steps needed / layers, per layer).
    """
    record_every = max(1, instances.n_samples // network.batch_size)
    curves = {
        scale: classical_median_curve(
            type(network),
            instances,
            f_star,
            batch_size=network.batch_size,
            step_scale=scale,
            max_steps=max_steps,
            record_every=record_every,
            generator=torch.Generator().manual_seed(generator_seed),
        )
        for scale in step_scales
    }
    needed = steps_to_reach(layer_medians[1:], curves, record_every)
    ratio = [None if steps is None else steps / k for k, steps in enumerate(needed, start=1)]
    return {
        "step_scales": list(step_scales),
        "curves": {str(scale): curve for scale, curve in curves.items()},
        "record_every": record_every,
        "max_steps": max_steps,
        "steps_needed": needed,
        "ratio": ratio,
    }


def render_comparison_png(name: str, layer_medians: list[float], comparison: dict[str, Any], dpi: int = 110) -> bytes:
    """Return a PNG of the median test suboptimality after each layer (network) and each recorded step (classical, every scale).

    Both axes are logarithmic; step 0 (the shared starting point) is left out.
    """
    figure = Figure(figsize=(6.4, 4.8), layout="constrained")
    FigureCanvasAgg(figure)
    ax = figure.subplots()
    every = comparison["record_every"]
    scales = comparison["curves"]
    for index, (scale, curve) in enumerate(scales.items()):
        shade = 0.25 + 0.6 * index / max(1, len(scales) - 1)
        steps = [every * i for i in range(1, len(curve))]
        ax.plot(steps, curve[1:], color=(shade, shade, shade), linewidth=1, label=f"classical, step {float(scale):g}/L_b")
    ax.plot(range(1, len(layer_medians)), layer_medians[1:], color="tab:red", marker="o", markersize=3, label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("layer (network) / step (classical)")
    ax.set_ylabel("median test suboptimality F − F*")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()
