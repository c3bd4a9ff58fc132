r"""Measured studies of the bilevel module, written to ``docs/bilevel.md`` and ``docs/figures/bilevel_*.png``.

- ``accuracy``: every hypergradient against central finite differences on three real problems, and
  the error of implicit and reverse-mode hypergradients as the inner solve tightens.
- ``memory``: peak memory that autograd holds (:class:`~unrolled.bilevel.memory.SavedTensorMemory`)
  for reverse mode, checkpointed and truncated reverse mode, and implicit differentiation, against
  the number of inner steps K, on hyper-cleaning of MNIST (7,850 inner unknowns).
- ``selection``: per-feature ℓ2 weights of logistic regression (breast cancer, digits) by
  implicit-gradient descent and SABA, against one weight chosen by grid and random search; the
  Lasso weight on diabetes by implicit-gradient descent against grid and random search.
- ``variance``: SABA with fixed steps against SOBA with fixed and with decreasing steps, on the
  single ℓ2 weight of breast cancer, over seeds: :math:`F(z^*(h_t)) - F^\star` against oracle calls.
- ``cleaning``: data hyper-cleaning of MNIST 5k at corruption p ∈ {0.5, 0.7, 0.9} with SABA, SOBA,
  stocBiO and implicit-gradient descent over 5 seeds (the seed draws the corrupted labels and the
  batches): test error against time, median and 20–80 % band, beside the model trained on the clean
  samples only; and a table for scikit-learn's digits.
- ``network``: ALISTA-16's per-layer steps and thresholds learned as hyperparameters with the full
  reverse-mode hypergradient (end-to-end training), truncated to the last 4 layers, and checkpointed,
  beside the Lasso weight learned by implicit differentiation and solved by FISTA
  (:mod:`unrolled.bilevel.network`), on the 250 × 500 sparse-coding problem at SNR 40 dB.

Run ``python -m unrolled.bilevel.study {accuracy,memory,selection,variance,cleaning,all} [--quick] [--output-dir docs]``.
Each study rewrites its marked section of ``bilevel.md`` (text outside the markers is kept) and
its figure. ``--quick`` uses small budgets and digits in place of MNIST, for the tests.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from matplotlib.figure import Figure

from unrolled.bilevel.full_batch import grid_search, implicit_gradient_descent, random_search
from unrolled.bilevel.hypergradient import ApproximateHypergradientWarning, implicit_hypergradient, unrolled_hypergradient
from unrolled.bilevel.memory import SavedTensorMemory
from unrolled.bilevel.network import SparseCodingLasso, fit_network, network_hypergradient
from unrolled.bilevel.problems import BilevelProblem, LinearModelBilevel
from unrolled.bilevel.stochastic import saba, soba, stocbio
from unrolled.bilevel.tasks import clean_only_error, hyper_cleaning, lasso_selection, regularisation_selection, uniform_error
from unrolled.bilevel.trace import BilevelResult, BilevelTrace
from unrolled.files import write_atomic
from unrolled.layers.alista import ALISTA
from unrolled.metrics import nmse_db
from unrolled.problems.base import seeded_generator
from unrolled.problems.sparse_coding import SparseCoding
from unrolled.solvers.ista import fista
from unrolled.report.pages import figure_png, study_header, update_marked_sections

log = logging.getLogger(__name__)

PAGE_FILE = "bilevel.md"
TAG = "bilevel_study"
STUDIES = ("accuracy", "memory", "selection", "variance", "cleaning", "network")
PAGE_SKELETON = "# Bilevel optimisation: measured studies\n\n" + "\n\n".join(
    f"<!-- {TAG}:{name}:begin -->\n<!-- {TAG}:{name}:end -->" for name in STUDIES
)
COLORS = {"SABA": "tab:orange", "SOBA": "tab:blue", "SOBA (fixed steps)": "tab:cyan", "stocBiO": "tab:green", "implicit GD": "tab:gray"}
# The ℓ2 weight of hyper-cleaning, picked by the study among these by the clean-only model's validation loss.
CLEANING_REG_GRID = (1e-3, 1e-2, 3e-2, 1e-1)


def _relative_error(estimate: torch.Tensor, reference: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(estimate - reference) / torch.linalg.vector_norm(reference))


def finite_differences(problem: BilevelProblem, hyper: torch.Tensor, coordinates: Sequence[int], *, eps: float = 1e-6, tol: float = 1e-12) -> torch.Tensor:
    """Central differences of :math:`h \\mapsto F(z^*(h), h)` along ``coordinates``, with tight warm-started inner solves."""
    base = problem.solve_inner(hyper, tol=tol).z
    values = []
    for j in coordinates:
        step = torch.zeros_like(hyper)
        step[j] = eps
        plus = problem.solve_inner(hyper + step, base, tol=tol).z
        minus = problem.solve_inner(hyper - step, base, tol=tol).z
        values.append(float(problem.outer(plus, hyper + step) - problem.outer(minus, hyper - step)) / (2 * eps))
    return torch.tensor(values, dtype=torch.float64)


def _timed(function: Callable[[], object]) -> tuple[object, float]:
    start = time.perf_counter()
    result = function()
    return result, time.perf_counter() - start


# Accuracy.


@dataclass(frozen=True)
class AccuracyRow:
    problem: str
    method: str
    relative_error: float
    seconds: float
    products: int


@dataclass(frozen=True)
class AccuracyCurve:
    steps: list[int]
    inner_residual: list[float]
    implicit_cg: list[float]
    implicit_neumann: list[float]
    reverse: list[float]


def _accuracy_problems(quick: bool) -> list[tuple[str, BilevelProblem, torch.Tensor, list[int]]]:
    """The three problems, hyperparameters away from the defaults, and the coordinates checked by finite differences."""
    selection = regularisation_selection("breast_cancer")
    cleaning = hyper_cleaning("digits", 0.5, reg_l2=0.03).problem
    lasso = lasso_selection()
    generator = torch.Generator().manual_seed(0)
    cleaning_hyper = 0.5 * torch.randn(cleaning.n_hyper, generator=generator, dtype=torch.float64)
    every = max(1, cleaning.n_hyper // (4 if quick else 12))
    return [
        ("breast cancer, 30 ℓ2 weights", selection, torch.linspace(-3, 0, selection.n_hyper, dtype=torch.float64), list(range(selection.n_hyper))),
        (f"digits hyper-cleaning, {cleaning.n_hyper} weights", cleaning, cleaning_hyper, list(range(0, cleaning.n_hyper, every))),
        ("diabetes, Lasso weight", lasso, torch.tensor([0.05 * lasso.reg_max()], dtype=torch.float64), [0]),
    ]


def run_accuracy(quick: bool) -> tuple[list[AccuracyRow], AccuracyCurve]:
    """Compare every method with finite differences, and trace errors against the inner budget."""
    rows = []
    reverse_steps = 1000 if quick else 5000
    for name, problem, hyper, coordinates in _accuracy_problems(quick):
        reference = finite_differences(problem, hyper, coordinates)
        solution = problem.solve_inner(hyper, tol=1e-12)
        methods: dict[str, Callable] = {
            "implicit, conjugate gradient": lambda p=problem, h=hyper, z=solution.z: implicit_hypergradient(p, h, z, tol=1e-12, inner_tol=1e-11),
            "implicit, Neumann series": lambda p=problem, h=hyper, z=solution.z: implicit_hypergradient(
                p, h, z, solver="neumann", tol=1e-12, max_iter=200_000, inner_tol=1e-11
            ),
            "implicit, dense solve": lambda p=problem, h=hyper, z=solution.z: implicit_hypergradient(p, h, z, solver="direct", tol=1e-10, inner_tol=1e-11),
            f"reverse mode, K = {reverse_steps}": lambda p=problem, h=hyper: unrolled_hypergradient(p, h, max_iter=reverse_steps),
            f"reverse mode, K = {reverse_steps}, checkpoint every 100": lambda p=problem, h=hyper: unrolled_hypergradient(
                p, h, max_iter=reverse_steps, checkpoint_every=100
            ),
            f"truncated, last 50 of {reverse_steps}": lambda p=problem, h=hyper: unrolled_hypergradient(p, h, max_iter=reverse_steps, truncate=50),
        }
        for method, function in methods.items():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ApproximateHypergradientWarning)
                result, seconds = _timed(function)
            error = _relative_error(result.gradient[coordinates], reference)
            rows.append(AccuracyRow(name, method, error, seconds, result.n_products))
            log.info("accuracy %s / %s: relative error %.2e in %.2f s", name, method, error, seconds)

    name, problem, hyper, coordinates = _accuracy_problems(quick)[0]
    reference = finite_differences(problem, hyper, coordinates)
    steps = [10, 30, 100, 300, 1000] if quick else [10, 30, 100, 300, 1000, 3000, 10_000]
    curve = AccuracyCurve(steps, [], [], [], [])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ApproximateHypergradientWarning)
        for K in steps:
            reverse = unrolled_hypergradient(problem, hyper, max_iter=K)
            curve.reverse.append(_relative_error(reverse.gradient, reference))
            curve.inner_residual.append(reverse.inner_residual)
            cg = implicit_hypergradient(problem, hyper, reverse.z, tol=1e-12)
            neumann = implicit_hypergradient(problem, hyper, reverse.z, solver="neumann", tol=1e-12, max_iter=200_000)
            curve.implicit_cg.append(_relative_error(cg.gradient, reference))
            curve.implicit_neumann.append(_relative_error(neumann.gradient, reference))
    return rows, curve


def plot_accuracy(curve: AccuracyCurve) -> Figure:
    figure = Figure(figsize=(9, 3.3), layout="constrained")
    left, right = figure.subplots(1, 2)
    left.loglog(curve.inner_residual, curve.implicit_cg, "o-", color="tab:blue", label="implicit, CG")
    left.loglog(curve.inner_residual, curve.implicit_neumann, "s--", color="tab:cyan", label="implicit, Neumann")
    left.set_xlabel("inner residual ‖∇G(z_K)‖")
    left.set_ylabel("relative error vs finite differences")
    left.invert_xaxis()
    left.legend(fontsize="small")
    right.loglog(curve.steps, curve.reverse, "^-", color="tab:orange", label="reverse mode through K steps")
    right.loglog(curve.steps, curve.implicit_cg, "o-", color="tab:blue", label="implicit (CG) at z_K")
    right.set_xlabel("inner steps K")
    right.legend(fontsize="small")
    figure.suptitle("Breast cancer, 30 per-feature ℓ2 weights: hypergradient error as the inner solve tightens", fontsize="medium")
    return figure


def accuracy_section(result: tuple[list[AccuracyRow], AccuracyCurve], header: str) -> str:
    rows, curve = result
    lines = [
        header,
        "",
        "Relative error ‖g − g_FD‖ / ‖g_FD‖ against central finite differences (step 1e-6, inner solves to residual 1e-12), "
        "in float64; time of one hypergradient; products are Hessian-vector products (implicit) or inner steps (reverse mode).",
        "",
        "| problem | method | relative error | time (s) | products |",
        "|---|---|---:|---:|---:|",
    ]
    lines += [f"| {r.problem} | {r.method} | {r.relative_error:.1e} | {r.seconds:.3f} | {r.products} |" for r in rows]
    lines += [
        "",
        "![Hypergradient error against the inner budget](figures/bilevel_accuracy.png)",
        "",
        "| inner steps K | inner residual | implicit CG | implicit Neumann | reverse mode |",
        "|---:|---:|---:|---:|---:|",
    ]
    for K, residual, cg, neumann, reverse in zip(curve.steps, curve.inner_residual, curve.implicit_cg, curve.implicit_neumann, curve.reverse):
        lines.append(f"| {K} | {residual:.1e} | {cg:.1e} | {neumann:.1e} | {reverse:.1e} |")
    return "\n".join(lines)


# Memory.


@dataclass(frozen=True)
class MemoryResult:
    problem: str
    steps: list[int]
    peak_mb: dict[str, list[float]]
    seconds: dict[str, list[float]]


def _peak(function: Callable[[], object]) -> tuple[float, float]:
    with SavedTensorMemory() as meter:
        _, seconds = _timed(function)
    return meter.peak_bytes / 2**20, seconds


def run_memory(quick: bool) -> MemoryResult:
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


def memory_section(result: MemoryResult, header: str) -> str:
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


# Regularisation selection.


@dataclass(frozen=True)
class SelectionRow:
    problem: str
    method: str
    n_hyper: int
    val_loss: float
    test_score: float
    score_name: str
    seconds: float


def _selection_row(problem_name: str, method: str, problem: LinearModelBilevel, result: BilevelResult) -> SelectionRow:
    trace = result.trace
    searched = result.method in ("grid-search", "random-search")
    best = min(range(len(trace.outer_value)), key=trace.outer_value.__getitem__) if searched else len(trace.outer_value) - 1
    classification = problem.loss.name != "squared"
    score = trace.test_error[best] if classification else trace.test_loss[best]
    return SelectionRow(
        problem_name,
        method,
        result.hyper.numel(),
        trace.outer_value[best],
        score,
        "test error" if classification else "test ½MSE",
        trace.time[-1],
    )


def run_selection(quick: bool) -> list[SelectionRow]:
    rows = []
    n_points = 8 if quick else 30
    igd_steps = 10 if quick else 60
    for name in ("breast_cancer",) if quick else ("breast_cancer", "digits"):
        per_feature = regularisation_selection(name)
        single = regularisation_selection(name, per_feature=False)
        grid = torch.linspace(-10, 2, n_points, dtype=torch.float64)[:, None]
        rows.append(_selection_row(name, "grid search, one weight", single, grid_search(single, grid)))
        rows.append(_selection_row(name, "random search, one weight", single, random_search(single, n_points, -10.0, 2.0)))
        rows.append(_selection_row(name, "implicit GD, one weight", single, implicit_gradient_descent(single, n_iter=igd_steps, eval_every=igd_steps)))
        rows.append(
            _selection_row(name, "implicit GD, per-feature weights", per_feature, implicit_gradient_descent(per_feature, n_iter=igd_steps, eval_every=igd_steps))
        )
        saba_steps = 2000 if quick else 20_000
        rows.append(
            _selection_row(
                name, "SABA, per-feature weights", per_feature, saba(per_feature, n_iter=saba_steps, batch_size=16, outer_step=0.05, eval_every=saba_steps)
            )
        )
    lasso = lasso_selection()
    reg_max = lasso.reg_max()
    grid = torch.logspace(math.log10(reg_max) - 4, math.log10(reg_max), n_points, dtype=torch.float64)[:, None]
    rows.append(_selection_row("diabetes", "grid search (log grid)", lasso, grid_search(lasso, grid)))
    rows.append(_selection_row("diabetes", "random search", lasso, random_search(lasso, n_points, 0.0, reg_max)))
    rows.append(_selection_row("diabetes", "implicit GD (on the support)", lasso, implicit_gradient_descent(lasso, n_iter=igd_steps, outer_step=reg_max, eval_every=igd_steps)))
    return rows


def selection_section(rows: list[SelectionRow], header: str) -> str:
    lines = [
        header,
        "",
        "Validation loss at the chosen hyperparameters (the outer objective: mean logistic or multinomial loss, "
        "or half the mean squared error), the test score of the model refitted with them, and the solver time "
        "(inner solves included, scoring excluded). Searches report their best point.",
        "",
        "| data | method | hyperparameters | validation loss | test score | time (s) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    lines += [f"| {r.problem} | {r.method} | {r.n_hyper} | {r.val_loss:.4f} | {r.score_name} {r.test_score:.4f} | {r.seconds:.2f} |" for r in rows]
    return "\n".join(lines)


# Variance: SABA against SOBA.


@dataclass(frozen=True)
class VarianceResult:
    optimum: float
    traces: dict[str, list[BilevelTrace]]


VARIANCE_METHODS: dict[str, Callable[..., BilevelResult]] = {
    "SABA": lambda problem, **options: saba(problem, **options),
    "SOBA (fixed steps)": lambda problem, **options: soba(problem, decreasing=False, **options),
    "SOBA": lambda problem, **options: soba(problem, **options),
}


def run_variance(quick: bool) -> VarianceResult:
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


def _quantiles(values: list[list[float]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    table = torch.tensor(values, dtype=torch.float64)
    # quantile(0.5) rather than median(): the latter takes the lower middle value of an even count.
    return table.quantile(0.5, dim=0), table.quantile(0.2, dim=0), table.quantile(0.8, dim=0)


def plot_variance(result: VarianceResult) -> Figure:
    figure = Figure(figsize=(6, 3.6), layout="constrained")
    axes = figure.subplots()
    for method, runs in result.traces.items():
        calls = runs[0].oracle_calls
        gaps = [[max(value - result.optimum, 1e-12) for value in trace.outer_value] for trace in runs]
        median, low, high = _quantiles(gaps)
        axes.semilogy(calls, median, color=COLORS[method], label=method)
        axes.fill_between(calls, low, high, color=COLORS[method], alpha=0.25, linewidth=0)
    axes.set_xlabel("oracle calls (per-sample gradients, products, cross derivatives)")
    axes.set_ylabel("F(z*(h_t)) − F*")
    axes.legend(fontsize="small")
    axes.set_title("Breast cancer, one ℓ2 weight: median and 20–80 % band over seeds", fontsize="medium")
    return figure


def variance_section(result: VarianceResult, header: str) -> str:
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


# Hyper-cleaning.


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
    """The four solvers with the steps the study uses (chosen on MNIST at p = 0.5, seed 0)."""
    every = max(1, setting.saba_iter // 10)
    return {
        "SABA": lambda p, seed: saba(p, n_iter=setting.saba_iter, batch_size=setting.batch_size, outer_step=30.0, seed=seed, eval_every=every),
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
    """Return the ℓ2 weight of :data:`CLEANING_REG_GRID` with the lowest validation loss of the clean-only model (seed 0, p = 0.5)."""
    best, best_loss = None, math.inf
    for reg in CLEANING_REG_GRID:
        task = hyper_cleaning(dataset, 0.5, reg_l2=reg)
        problem = task.problem
        hyper = torch.where(task.corrupted, -40.0, 40.0).to(problem.dtype)
        loss = problem.mean_loss(problem.solve_inner(hyper, tol=1e-7).z, "val")
        if loss < best_loss:
            best, best_loss = reg, loss
    return best


def run_cleaning(settings: Sequence[CleaningSetting]) -> list[CleaningResult]:
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
            median, low, high = _quantiles(_on_time_grid(runs, grid))
            ax.plot(grid, 100 * median, color=COLORS[name], label=name)
            ax.fill_between(grid, 100 * low, 100 * high, color=COLORS[name], alpha=0.25, linewidth=0)
        ax.axhline(100 * float(torch.tensor(result.clean_error[p]).quantile(0.5)), color="black", linestyle=":", label="clean samples only")
        ax.set_xscale("symlog", linthresh=1.0)
        ax.set_title(f"p = {p}", fontsize="medium")
        ax.set_xlabel("solver time (s)")
    axes[0].set_ylabel("test error (%)")
    axes[0].legend(fontsize="small")
    figure.suptitle(f"Hyper-cleaning {result.setting.dataset}: median and 20–80 % band over {result.setting.seeds} seeds", fontsize="medium")
    return figure


def cleaning_section(results: list[CleaningResult], header: str) -> str:
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
            def cell(values: list[float]) -> str:
                median, low, high = (float(x) for x in _quantiles([[v] for v in values]))
                return f"{100 * median:.1f} [{100 * low:.1f}, {100 * high:.1f}]"

            finals = {name: [trace.test_error[-1] for trace in runs] for name, runs in result.traces[p].items()}
            gap = 100 * (float(torch.tensor(finals["SABA"]).quantile(0.5)) - float(torch.tensor(result.clean_error[p]).quantile(0.5)))
            lines.append(
                f"| {p} | {cell(result.clean_error[p])} | {cell(result.uniform_error[p])} | {cell(finals['SABA'])} | "
                f"{cell(finals['SOBA'])} | {cell(finals['stocBiO'])} | {cell(finals['implicit GD'])} | {gap:+.1f} |"
            )
        lines += ["", f"![Hyper-cleaning {setting.dataset}](figures/bilevel_cleaning_{setting.dataset}.png)", ""]
    return "\n".join(lines).rstrip()


# An unrolled network's parameters.


@dataclass(frozen=True)
class NetworkResult:
    traces: dict[str, list[tuple[int, float, float]]]
    peak_mb: dict[str, float]
    lasso_weight: float
    lasso_seconds: float
    fista_nmse_db: dict[int, float]
    n_layers: int
    n_steps: int
    batch_size: int
    lasso_samples: int


NETWORK_MODES = {"end to end (full reverse mode)": {}, "truncated, last 4 layers": {"truncate": 4}, "checkpoint every 4 layers": {"checkpoint_every": 4}}


def run_network(quick: bool) -> NetworkResult:
    problem = SparseCoding(snr_db=40)
    A = problem.A.to(torch.float32)
    n_layers, batch_size = 16, 64
    n_steps = 10 if quick else 300
    traces, peaks = {}, {}
    y_probe, x_probe = (t.to(torch.float32) for t in problem.sample(batch_size, seeded_generator(11)))
    for mode, options in NETWORK_MODES.items():
        torch.manual_seed(0)
        network = ALISTA(A, n_layers)
        trace = fit_network(network, problem, n_steps=n_steps, batch_size=batch_size, lr=5e-3, eval_every=max(1, n_steps // 12), **options)
        traces[mode] = list(zip(trace.step, trace.time, trace.test_nmse_db))
        with SavedTensorMemory() as meter:
            network_hypergradient(network, y_probe, x_probe, **options)
        peaks[mode] = meter.peak_bytes / 2**20
        log.info("network %s: %.2f dB after %d steps, %.1f s", mode, trace.test_nmse_db[-1], n_steps, trace.time[-1])

    lasso_samples = 16 if quick else 64
    y, x = problem.sample(lasso_samples, seeded_generator(7))
    lasso = SparseCodingLasso(problem.A, y, x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ApproximateHypergradientWarning)
        result, seconds = _timed(lambda: implicit_gradient_descent(lasso, n_iter=3 if quick else 15, outer_step=float(lasso.initial_hyper()[0]), eval_every=100))
    weight = float(result.hyper[0])
    y_test, x_test = problem.sample(100 if quick else problem.n_test, seeded_generator(problem.seeds["test"]))
    fista_db = {K: float(nmse_db(fista(problem.A, y_test, weight, max_iter=K).x, x_test)) for K in ((16, 100) if quick else (16, 100, 1000, 3000))}
    return NetworkResult(traces, peaks, weight, seconds, fista_db, n_layers, n_steps, batch_size, lasso_samples)


def plot_network(result: NetworkResult) -> Figure:
    figure = Figure(figsize=(6, 3.6), layout="constrained")
    axes = figure.subplots()
    for mode, rows in result.traces.items():
        axes.plot([row[0] for row in rows], [row[2] for row in rows], "o-", markersize=3, label=f"ALISTA-16, {mode}")
    axes.axhline(result.fista_nmse_db[16], color="tab:gray", linestyle="--", label="FISTA, 16 iterations, bilevel λ")
    longest = max(result.fista_nmse_db)
    axes.axhline(result.fista_nmse_db[longest], color="black", linestyle=":", label=f"FISTA, {longest:,} iterations, bilevel λ")
    axes.set_xlabel("Adam steps (64 fresh samples each)")
    axes.set_ylabel("test NMSE (dB)")
    axes.legend(fontsize="small")
    axes.set_title("Sparse coding 250 × 500, SNR 40 dB", fontsize="medium")
    return figure


def network_section(result: NetworkResult, header: str) -> str:
    lines = [
        header,
        "",
        f"ALISTA with {result.n_layers} layers (32 parameters: a step and a threshold per layer), float32, Adam at 5e-3 "
        f"for {result.n_steps} steps of {result.batch_size} fresh samples; the outer loss is Σ‖x_K − x‖²/Σ‖x‖². Test NMSE "
        "(aggregate, dB) on the problem's test samples; peak saved-tensor memory of one hypergradient on 64 samples.",
        "",
        "| hypergradient | test NMSE (dB) | training time (s) | peak memory (MiB) |",
        "|---|---:|---:|---:|",
    ]
    for mode, rows in result.traces.items():
        lines.append(f"| {mode} | {rows[-1][2]:.2f} | {rows[-1][1]:.1f} | {result.peak_mb[mode]:.2f} |")
    lines += [
        "",
        f"The Lasso weight that minimises the same loss on {result.lasso_samples} training samples, by implicit-gradient descent on the support: "
        f"λ = {result.lasso_weight:.4g} ({result.lasso_seconds:.0f} s). FISTA with that λ on the test samples:",
        "",
        "| FISTA iterations | " + " | ".join(str(K) for K in result.fista_nmse_db) + " |",
        "|---|" + "---:|" * len(result.fista_nmse_db),
        "| test NMSE (dB) | " + " | ".join(f"{value:.2f}" for value in result.fista_nmse_db.values()) + " |",
        "",
        "![ALISTA's parameters as hyperparameters](figures/bilevel_network.png)",
    ]
    return "\n".join(lines)


# Driver.


def write_study(study: str, output_dir: str | Path, *, quick: bool = False) -> str:
    """Run one study, write its figures and its section of ``bilevel.md`` under ``output_dir``, and return the section."""
    output_dir = Path(output_dir)
    command = f"python -m unrolled.bilevel.study {study}" + (" --quick" if quick else "")
    start = time.perf_counter()
    figures: dict[str, Figure] = {}
    if study == "accuracy":
        result = run_accuracy(quick)
        figures["figures/bilevel_accuracy.png"] = plot_accuracy(result[1])
        render, title = accuracy_section, "Hypergradient accuracy"
    elif study == "memory":
        result = run_memory(quick)
        figures["figures/bilevel_memory.png"] = plot_memory(result)
        render, title = memory_section, "Memory against depth"
    elif study == "selection":
        result = run_selection(quick)
        render, title = selection_section, "Regularisation selection"
    elif study == "variance":
        result = run_variance(quick)
        figures["figures/bilevel_variance.png"] = plot_variance(result)
        render, title = variance_section, "SABA with fixed steps against SOBA"
    elif study == "cleaning":
        result = run_cleaning(QUICK_CLEANING_SETTINGS if quick else CLEANING_SETTINGS)
        for item in result:
            figures[f"figures/bilevel_cleaning_{item.setting.dataset}.png"] = plot_cleaning(item)
        render, title = cleaning_section, "Data hyper-cleaning"
    elif study == "network":
        result = run_network(quick)
        figures["figures/bilevel_network.png"] = plot_network(result)
        render, title = network_section, "An unrolled network's parameters as hyperparameters"
    else:
        raise ValueError(f"unknown study {study!r}: expected one of {', '.join(STUDIES)}.")
    section = render(result, study_header(title, command, time.perf_counter() - start, quick))
    for name, figure in figures.items():
        write_atomic(output_dir / name, figure_png(figure))
    update_marked_sections(output_dir / PAGE_FILE, {study: section}, tag=TAG, skeleton=PAGE_SKELETON)
    log.info("%s study written to %s", study, output_dir / PAGE_FILE)
    return section


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m unrolled.bilevel.study", description=__doc__.splitlines()[0])
    parser.add_argument("study", choices=(*STUDIES, "all"), help="the study to run (all: each in turn)")
    parser.add_argument("--output-dir", default="docs", help="folder whose bilevel.md (its study sections) and figures/ are rewritten (default: docs)")
    parser.add_argument("--quick", action="store_true", help="small budgets and data sets, for the tests")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)
    for study in STUDIES if args.study == "all" else (args.study,):
        print(write_study(study, args.output_dir, quick=args.quick) + "\n")


if __name__ == "__main__":
    main()
