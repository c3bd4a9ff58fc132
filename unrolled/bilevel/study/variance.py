"""Study ``variance``: SABA with fixed steps against SOBA with fixed and with decreasing steps, over seeds."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from matplotlib.figure import Figure

from unrolled.bilevel.full_batch import implicit_gradient_descent
from unrolled.bilevel.stochastic import saba, soba
from unrolled.bilevel.study.common import COLORS, quantiles
from unrolled.bilevel.tasks import regularisation_selection
from unrolled.bilevel.trace import BilevelResult, BilevelTrace

TITLE = "SABA with fixed steps against SOBA"


@dataclass(frozen=True)
class VarianceResult:
    optimum: float
    traces: dict[str, list[BilevelTrace]]


VARIANCE_METHODS: dict[str, Callable[..., BilevelResult]] = {
    "SABA": lambda problem, **options: saba(problem, **options),
    "SOBA (fixed steps)": lambda problem, **options: soba(problem, decreasing=False, **options),
    "SOBA": lambda problem, **options: soba(problem, **options),
}


def run(quick: bool) -> VarianceResult:
    problem = regularisation_selection("breast_cancer", per_feature=False)
    reference = implicit_gradient_descent(problem, n_iter=200, eval_every=200)
    n_iter = 4000 if quick else 30_000
    seeds = range(2 if quick else 5)
    traces = {
        method: [run(problem, n_iter=n_iter, batch_size=8, outer_step=0.05, eval_every=n_iter // 30, seed=seed).trace for seed in seeds]
        for method, run in VARIANCE_METHODS.items()
    }
    optimum = min([reference.trace.outer_value[-1]] + [min(t.outer_value) for runs in traces.values() for t in runs])
    return VarianceResult(optimum, traces)


def plot_variance(result: VarianceResult) -> Figure:
    figure = Figure(figsize=(6, 3.6), layout="constrained")
    axes = figure.subplots()
    for method, runs in result.traces.items():
        calls = runs[0].oracle_calls
        gaps = [[max(value - result.optimum, 1e-12) for value in trace.outer_value] for trace in runs]
        median, low, high = quantiles(gaps)
        axes.semilogy(calls, median, color=COLORS[method], label=method)
        axes.fill_between(calls, low, high, color=COLORS[method], alpha=0.25, linewidth=0)
    axes.set_xlabel("oracle calls (per-sample gradients, products, cross derivatives)")
    axes.set_ylabel("F(z*(h_t)) − F*")
    axes.legend(fontsize="small")
    axes.set_title("Breast cancer, one ℓ2 weight: median and 20–80 % band over seeds", fontsize="medium")
    return figure


def section(result: VarianceResult, header: str) -> str:
    lines = [
        header,
        "",
        "One log ℓ2 weight of logistic regression on breast cancer; batches of 8 training and 8 validation samples; "
        "inner step 0.5/L, outer step 0.05 (initial values for SOBA, which decreases them as (1 + t/100)^(-2/5) and "
        "^(-3/5)). F* is the lowest outer value seen, by 200 steps of implicit-gradient descent or any run.",
        "",
        "| method | seeds | median F − F* at the end | 20 % | 80 % |",
        "|---|---:|---:|---:|---:|",
    ]
    for method, runs in result.traces.items():
        final = torch.tensor([trace.outer_value[-1] - result.optimum for trace in runs], dtype=torch.float64)
        lines.append(f"| {method} | {len(runs)} | {float(final.quantile(0.5)):.1e} | {float(final.quantile(0.2)):.1e} | {float(final.quantile(0.8)):.1e} |")
    lines += ["", "![SABA against SOBA](figures/bilevel_variance.png)"]
    return "\n".join(lines)


def figures(result: VarianceResult) -> dict[str, Figure]:
    """Return the study's figures by their path under the output folder."""
    return {"figures/bilevel_variance.png": plot_variance(result)}
