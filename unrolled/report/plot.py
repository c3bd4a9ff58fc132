"""Figure of a report: aggregate test NMSE in dB against layers (models) and iterations (ISTA, FISTA).

The figure is drawn on a bare :class:`matplotlib.figure.Figure` with the Agg canvas, so it neither
needs a display nor changes pyplot's global backend.
"""

from __future__ import annotations

import io

from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from unrolled.report.results import Report

SOLVER_STYLES = {"ista": ("ISTA", "tab:gray", "--"), "fista": ("FISTA", "black", "-")}
# Model colours: tab20 without its two grays, which are close to the ISTA curve. Markers cycle
# alongside, so every colour and marker pair stays distinct up to 90 models on one panel.
MODEL_COLORS = [color for index, color in enumerate(colormaps["tab20"].colors) if index not in (14, 15)]
MODEL_MARKERS = ("o", "s", "^", "D", "v")
# Above this many curves the legend moves to the right of the panel, where it cannot hide curves.
LEGEND_INSIDE_MAX = 8


def plot_report(report: Report) -> Figure:
    """Draw one panel per problem: each model's NMSE after layer k, each solver's NMSE after iteration k, log-scale k."""
    n_panels = len(report.problems)
    figure = Figure(figsize=(6.4 * n_panels, 4.8), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, n_panels, squeeze=False)[0]

    for ax, problem in zip(axes, report.problems):
        for solver, (label, color, linestyle) in SOLVER_STYLES.items():
            run = problem.run(solver)
            iterations = range(1, len(run.trace.nmse_db))
            ax.plot(iterations, run.trace.nmse_db[1:], color=color, linestyle=linestyle, label=f"{label} (reg = {run.reg:.3g})")
        models = [model for model in report.models if model.problem_id == problem.problem_id]
        for index, model in enumerate(models):
            layers = [layer.n_layers for layer in model.layers]
            color = MODEL_COLORS[index % len(MODEL_COLORS)]
            marker = MODEL_MARKERS[index % len(MODEL_MARKERS)]
            ax.plot(layers, [layer.nmse_db for layer in model.layers], color=color, marker=marker, markersize=3, label=model.name)

        ax.set_xscale("log")
        ax.set_xlabel("layer (models) / iteration (ISTA, FISTA)")
        ax.set_ylabel("test NMSE, aggregate (dB)")
        ax.set_title(f"{problem.problem_id}: {problem.spec.get('name', '')}, {problem.n_test} test samples")
        ax.grid(True, which="both", alpha=0.3)
        if len(models) + len(SOLVER_STYLES) <= LEGEND_INSIDE_MAX:
            ax.legend(fontsize="small")
        else:
            ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0), ncols=1 + len(models) // 20)
    return figure


def render_png(report: Report, dpi: int = 120) -> bytes:
    """Return the report figure as PNG bytes."""
    buffer = io.BytesIO()
    plot_report(report).savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()
