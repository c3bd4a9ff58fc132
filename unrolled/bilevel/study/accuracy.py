"""Study ``accuracy``: every hypergradient against central finite differences, and errors as the inner solve tightens."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from matplotlib.figure import Figure

from unrolled.bilevel.hypergradient import ApproximateHypergradientWarning, implicit_hypergradient, unrolled_hypergradient
from unrolled.bilevel.problems import BilevelProblem
from unrolled.bilevel.study.common import finite_differences, relative_error, timed
from unrolled.bilevel.tasks import hyper_cleaning, lasso_selection, regularisation_selection

log = logging.getLogger(__name__)

TITLE = "Hypergradient accuracy"


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
    """Return the three problems, hyperparameters away from the defaults, and the coordinates checked by finite differences."""
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


def run(quick: bool) -> tuple[list[AccuracyRow], AccuracyCurve]:
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
                result, seconds = timed(function)
            error = relative_error(result.gradient[coordinates], reference)
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
            curve.reverse.append(relative_error(reverse.gradient, reference))
            curve.inner_residual.append(reverse.inner_residual)
            cg = implicit_hypergradient(problem, hyper, reverse.z, tol=1e-12)
            neumann = implicit_hypergradient(problem, hyper, reverse.z, solver="neumann", tol=1e-12, max_iter=200_000)
            curve.implicit_cg.append(relative_error(cg.gradient, reference))
            curve.implicit_neumann.append(relative_error(neumann.gradient, reference))
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


def section(result: tuple[list[AccuracyRow], AccuracyCurve], header: str) -> str:
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


def figures(result: tuple[list[AccuracyRow], AccuracyCurve]) -> dict[str, Figure]:
    """Return the study's figures by their path under the output folder."""
    return {"figures/bilevel_accuracy.png": plot_accuracy(result[1])}
