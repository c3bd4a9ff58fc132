"""Study ``memory``: peak saved-tensor memory and time of each hypergradient against the number of inner steps."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass

from matplotlib.figure import Figure

from unrolled.bilevel.hypergradient import ApproximateHypergradientWarning, implicit_hypergradient, unrolled_hypergradient
from unrolled.memory import SavedTensorMemory
from unrolled.bilevel.study.common import timed
from unrolled.bilevel.tasks import hyper_cleaning

log = logging.getLogger(__name__)

TITLE = "Memory against depth"


@dataclass(frozen=True)
class MemoryResult:
    problem: str
    steps: list[int]
    peak_mb: dict[str, list[float]]
    seconds: dict[str, list[float]]


def _peak(function: Callable[[], object]) -> tuple[float, float]:
    with SavedTensorMemory() as meter:
        _, seconds = timed(function)
    return meter.peak_bytes / 2**20, seconds


def run(quick: bool) -> MemoryResult:
    """Peak saved-tensor memory and time of each method against K, on hyper-cleaning (MNIST 5k, or digits when quick)."""
    name = "digits" if quick else "mnist5k"
    problem = hyper_cleaning(name, 0.5, reg_l2=0.03).problem
    hyper = problem.initial_hyper()
    steps = [10, 20, 50] if quick else [10, 25, 50, 100, 200]
    z_star = problem.solve_inner(hyper, tol=1e-9).z
    methods: dict[str, Callable[[int], Callable[[], object]]] = {
        "reverse mode": lambda K: lambda: unrolled_hypergradient(problem, hyper, max_iter=K),
        "checkpoint every 10": lambda K: lambda: unrolled_hypergradient(problem, hyper, max_iter=K, checkpoint_every=10),
        "truncated, last 10": lambda K: lambda: unrolled_hypergradient(problem, hyper, max_iter=K, truncate=10),
        "implicit (CG) at z_K": lambda K: lambda: implicit_hypergradient(problem, hyper, z_star, inner_tol=1.0),
    }
    peak_mb = {method: [] for method in methods}
    seconds = {method: [] for method in methods}
    for K in steps:
        for method, make in methods.items():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ApproximateHypergradientWarning)
                peak, elapsed = _peak(make(K))
            peak_mb[method].append(peak)
            seconds[method].append(elapsed)
            log.info("memory K=%d %s: %.1f MiB, %.2f s", K, method, peak, elapsed)
    return MemoryResult(
        f"hyper-cleaning {name} ({problem.n_samples} training samples, {problem.dim * problem.n_outputs} inner unknowns)",
        steps,
        peak_mb,
        seconds,
    )


def plot_memory(result: MemoryResult) -> Figure:
    figure = Figure(figsize=(9, 3.3), layout="constrained")
    left, right = figure.subplots(1, 2)
    for method, values in result.peak_mb.items():
        left.plot(result.steps, values, "o-", label=method)
        right.plot(result.steps, result.seconds[method], "o-", label=method)
    left.set_xlabel("inner steps K")
    left.set_ylabel("peak saved-tensor memory (MiB)")
    right.set_xlabel("inner steps K")
    right.set_ylabel("time of one hypergradient (s)")
    left.legend(fontsize="small")
    figure.suptitle(f"Memory and time against depth: {result.problem}", fontsize="medium")
    return figure


def section(result: MemoryResult, header: str) -> str:
    lines = [
        header,
        "",
        f"Problem: {result.problem}, at h = 0. Peak bytes held in tensors that autograd saved for the backward pass "
        "(`SavedTensorMemory`), in MiB; time of one hypergradient in seconds. The implicit hypergradient starts from an "
        "inner solution computed once outside the measurement, so its row does not depend on K.",
        "",
        "| method | " + " | ".join(f"K = {K}" for K in result.steps) + " |",
        "|---|" + "---:|" * len(result.steps),
    ]
    for method, values in result.peak_mb.items():
        cells = " | ".join(f"{peak:.1f} MiB, {seconds:.2f} s" for peak, seconds in zip(values, result.seconds[method]))
        lines.append(f"| {method} | {cells} |")
    reverse = result.peak_mb["reverse mode"]
    slope = (reverse[-1] - reverse[0]) / (result.steps[-1] - result.steps[0])
    lines += [
        "",
        f"Reverse mode grows by {slope:.2f} MiB per inner step; checkpointing every 10 steps keeps one segment and the "
        "stored iterates; truncation keeps its last 10 steps whatever K; implicit differentiation keeps the graph of one "
        "gradient evaluation at a time.",
        "",
        "![Memory and time against depth](figures/bilevel_memory.png)",
    ]
    return "\n".join(lines)


def figures(result: MemoryResult) -> dict[str, Figure]:
    """Return the study's figures by their path under the output folder."""
    return {"figures/bilevel_memory.png": plot_memory(result)}
