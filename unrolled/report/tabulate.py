"""Markdown rendering of a :class:`~unrolled.report.results.Report`."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

from unrolled.report.classical import REACH_TOLERANCE_DB
from unrolled.report.results import LayerResult, ModelResult, ProblemResult, Report, SolverComparison

MISSING = "–"


def format_db(value: float | None) -> str:
    """Format a dB value with two decimals, or a dash for None."""
    if value is None:
        return MISSING
    return "nan" if math.isnan(value) else f"{value:.2f}"


def format_ms(seconds: float | None) -> str:
    """Format a duration given in seconds as milliseconds with three significant digits, or a dash for None."""
    if seconds is None:
        return MISSING
    return f"{seconds * 1e3:.3g}"


def format_iterations(n_iter: int | None, max_iter: int) -> str:
    return f"not reached in {max_iter}" if n_iter is None else str(n_iter)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Return a GitHub-flavoured markdown table with one line per entry of ``rows``."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def render_markdown(report: Report, plot_file: str | None = "report.png") -> str:
    """Render the whole report as markdown, with a link to ``plot_file`` at the end when it is given."""
    sections = [
        "# Unrolled networks against ISTA and FISTA",
        _machine_section(report.machine),
        _settings_section(report.settings),
        _conventions_section(report),
        *[_problem_section(problem, report.settings["max_iter"]) for problem in report.problems],
        *[_model_section(model, report.problem(model.problem_id)) for model in report.models],
        *[_image_section(problem, report) for problem in report.problems if problem.signal_range is not None],
    ]
    if plot_file:
        sections.append(f"## Plot\n\n![Test NMSE against layers and iterations]({plot_file})")
    return "\n\n".join(sections) + "\n"


def _machine_section(machine: dict) -> str:
    rows = [[key, str(value)] for key, value in machine.items()]
    return "## Machine\n\n" + markdown_table(["", "value"], rows)


def _settings_section(settings: dict) -> str:
    grid = ", ".join(f"{value:.3g}" for value in settings["reg_grid"])
    lines = [
        f"- classical iterations `max_iter`: {settings['max_iter']}",
        f"- `reg` grid ({len(settings['reg_grid'])} values): {grid}",
        f"- validation samples scoring the grid: up to {settings['val_size']}",
        f"- fixed `reg`: ISTA {settings['ista_reg']}, FISTA {settings['fista_reg']} (None: chosen from the grid)",
        f"- timed forward passes per layer count: {settings['timing_repeats']} (median reported)",
        f"- device: {settings['device']}",
    ]
    return "## Settings\n\n" + "\n".join(lines)


def _conventions_section(report: Report) -> str:
    text = f"""\
## How to read the tables

- NMSE is in dB on the test set. "NMSE" is the aggregate ratio 10·log10(Σ‖x̂ − x‖² / Σ‖x‖²) (LISTA-CP
  papers); "per-sample" is the mean over samples of 10·log10(‖x̂ − x‖² / ‖x‖²) (Open-L2O).
- ISTA and FISTA minimise ½‖Ax − y‖² + reg·‖x‖₁ with step 1/L from x = 0, in the problem's dtype
  (float64). `reg` is chosen per solver as the grid value with the best aggregate validation NMSE after
  `max_iter` iterations, unless fixed.
- "iterations to reach" is the first iteration count whose aggregate test NMSE is at most the model's
  aggregate NMSE at that layer (plus {REACH_TOLERANCE_DB:g} dB, so that last-bit rounding differences do not cost an
  iteration); "not reached in N" means N iterations do not reach it.
- Classical times are the solver trace's `time_s` at that iteration: seconds since the solver started,
  including the per-iteration trace bookkeeping (objective, NMSE and support size of every iterate),
  so they overstate the cost of the bare iterations.
- "forward" is the median wall-clock of `network(y_test, n_layers=k)` on the whole test set, in the
  network's own dtype, after one untimed call. "FISTA / forward" divides FISTA's time to reach the
  model's NMSE by that forward time.
- "after k" columns give the classical NMSE after as many iterations as the model has layers."""
    if any(problem.signal_range is not None for problem in report.problems):
        text += """
- PSNR (image problems) is 10·log10(range² / MSE) of `problem.signal(x̂)` against `problem.signal(x)`,
  with the MSE over every pixel of the test set and the problem's `signal_range` as range."""
    return text


def _problem_section(problem: ProblemResult, max_iter: int) -> str:
    spec = json.dumps(problem.spec, sort_keys=True)
    rows = []
    for solver in ("ista", "fista"):
        choice, trace = problem.reg(solver), problem.run(solver).trace
        chosen_by = "fixed" if choice.fixed else f"grid, {choice.val_size} validation samples"
        rows.append(
            [
                solver.upper(),
                f"{choice.reg:.4g}",
                chosen_by,
                format_db(trace.nmse_db[-1]),
                format_db(trace.nmse_db_per_sample[-1]),
                f"{trace.time_s[-1]:.3g}",
            ]
        )
    headers = ["solver", "reg", "chosen by", f"NMSE after {max_iter} (dB)", "per-sample (dB)", "time (s)"]
    parts = [
        f"## Problem {problem.problem_id}: {problem.spec.get('name', '')}",
        f"{problem.n_test} test samples. Spec: `{spec}`",
        markdown_table(headers, rows),
    ]
    grid_table = _grid_table(problem)
    if grid_table:
        parts += ["Validation NMSE (aggregate, dB) after `max_iter` iterations for each grid value:", grid_table]
    return "\n\n".join(parts)


def _grid_table(problem: ProblemResult) -> str:
    searched = [problem.reg(solver) for solver in ("ista", "fista") if not problem.reg(solver).fixed]
    if not searched:
        return ""
    grid = searched[0].grid
    rows = []
    for index, value in enumerate(grid):
        row = [f"{value:.4g}"]
        for choice in searched:
            mark = " (chosen)" if choice.grid[index] == choice.reg else ""
            row.append(format_db(choice.val_nmse_db[index]) + mark)
        rows.append(row)
    return markdown_table(["reg", *[choice.solver.upper() for choice in searched]], rows)


def _model_section(model: ModelResult, problem: ProblemResult) -> str:
    has_psnr = problem.signal_range is not None
    max_iter = problem.run("ista").max_iter
    headers = ["k", "NMSE (dB)", "per-sample (dB)"] + (["PSNR (dB)"] if has_psnr else [])
    headers += [
        "forward (ms)",
        "ISTA iterations to reach",
        "ISTA time (ms)",
        "FISTA iterations to reach",
        "FISTA time (ms)",
        "FISTA / forward",
        "ISTA NMSE after k (dB)",
        "FISTA NMSE after k (dB)",
    ]
    headers += ["FISTA PSNR after k (dB)"] if has_psnr else []
    rows = [_layer_row(layer, problem, max_iter) for layer in model.layers]
    title = (
        f"## Model {model.name} ({model.network_class}, {model.dtype}, {len(model.layers)} layers, problem {model.problem_id})"
    )
    return title + "\n\n" + markdown_table(headers, rows)


def _layer_row(layer: LayerResult, problem: ProblemResult, max_iter: int) -> list[str]:
    ista, fista = layer.solver("ista"), layer.solver("fista")
    row = [str(layer.n_layers), format_db(layer.nmse_db), format_db(layer.nmse_db_per_sample)]
    if problem.signal_range is not None:
        row.append(format_db(layer.psnr_db))
    row += [
        format_ms(layer.forward_s),
        format_iterations(ista.iterations_to_reach, max_iter),
        format_ms(ista.time_to_reach_s),
        format_iterations(fista.iterations_to_reach, max_iter),
        format_ms(fista.time_to_reach_s),
        _speedup(fista, layer.forward_s),
        format_db(ista.nmse_db_at_k),
        format_db(fista.nmse_db_at_k),
    ]
    if problem.signal_range is not None:
        fista_at_k = problem.metrics_at("fista", layer.n_layers)
        row.append(format_db(fista_at_k.psnr_db if fista_at_k else None))
    return row


def _speedup(comparison: SolverComparison, forward_s: float) -> str:
    if comparison.time_to_reach_s is None or forward_s <= 0:
        return MISSING
    return f"{comparison.time_to_reach_s / forward_s:.3g}×"


def _image_section(problem: ProblemResult, report: Report) -> str:
    headers = ["method", "PSNR (dB)", "NMSE (dB)", "per-sample (dB)"]
    rows = []
    for model in (model for model in report.models if model.problem_id == problem.problem_id):
        last = model.layers[-1]
        rows.append(
            [
                f"{model.name}, {last.n_layers} layers",
                format_db(last.psnr_db),
                format_db(last.nmse_db),
                format_db(last.nmse_db_per_sample),
            ]
        )
    for point in problem.iteration_metrics:
        if point.n_iter in _image_rows(problem, report):
            rows.append(
                [
                    f"FISTA, {point.n_iter} iterations",
                    format_db(point.psnr_db),
                    format_db(point.nmse_db),
                    format_db(point.nmse_db_per_sample),
                ]
            )
    title = f"## Image problem {problem.problem_id}: models beside FISTA (reg = {problem.reg('fista').reg:.4g})"
    return title + "\n\n" + markdown_table(headers, rows)


def _image_rows(problem: ProblemResult, report: Report) -> set[int]:
    """FISTA iteration counts of the image summary: each model's depth and the configured ``image_iters``."""
    depths = {len(model.layers) for model in report.models if model.problem_id == problem.problem_id}
    return depths | set(report.settings["image_iters"])
