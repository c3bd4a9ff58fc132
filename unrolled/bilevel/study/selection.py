"""Study ``selection``: ℓ2 weights and the Lasso weight by implicit-gradient descent and SABA against grid and random search."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from unrolled.bilevel.full_batch import grid_search, implicit_gradient_descent, random_search
from unrolled.bilevel.problems import LinearModelBilevel
from unrolled.bilevel.stochastic import saba
from unrolled.bilevel.tasks import lasso_selection, regularisation_selection
from unrolled.bilevel.trace import BilevelResult

TITLE = "Regularisation selection"


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


def run(quick: bool) -> list[SelectionRow]:
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


def section(rows: list[SelectionRow], header: str) -> str:
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


def figures(result: list[SelectionRow]) -> dict[str, Figure]:
    """Return no figure: the study is a table."""
    return {}
