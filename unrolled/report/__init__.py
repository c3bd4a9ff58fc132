"""Comparison reports: every layer of trained unrolled networks against ISTA and FISTA iterations.

:func:`make_report` computes a :class:`Report` (:mod:`.compute`) and writes ``report.md``
(:mod:`.tabulate`), ``report.json`` (:mod:`.results`) and ``report.png`` (:mod:`.plot`) atomically
(:mod:`.output`). Only torch, numpy, matplotlib and tqdm are used.

Problems get PSNR columns when they define ``signal_range``, the peak-to-peak range of
``problem.signal(x)`` (for example 1.0 for images in [0, 1]).
"""

from unrolled.report.compute import DEFAULT_REG_GRID, ModelEntry, NamedModel, ReportConfig, check_one_problem, compute_report
from unrolled.report.output import load_report, make_report, write_report
from unrolled.report.plot import plot_report, render_png
from unrolled.report.results import Report, report_from_dict, report_to_dict
from unrolled.report.tabulate import render_markdown

__all__ = [
    "DEFAULT_REG_GRID",
    "ModelEntry",
    "NamedModel",
    "Report",
    "ReportConfig",
    "check_one_problem",
    "compute_report",
    "load_report",
    "make_report",
    "plot_report",
    "render_markdown",
    "render_png",
    "report_from_dict",
    "report_to_dict",
    "write_report",
]
