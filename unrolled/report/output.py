"""Atomic writing of ``report.md``, ``report.json`` and ``report.png`` into an output folder."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

from unrolled.files import write_atomic
from unrolled.report.compute import ModelEntry, ReportConfig, compute_report
from unrolled.report.plot import render_png
from unrolled.report.results import Report, report_from_dict, report_to_dict
from unrolled.report.tabulate import render_markdown

log = logging.getLogger(__name__)

MARKDOWN_FILE = "report.md"
JSON_FILE = "report.json"
PLOT_FILE = "report.png"


def write_report(report: Report, output_dir: str | Path) -> dict[str, Path]:
    """Write the JSON, PNG and markdown files of ``report`` atomically and return their paths, keyed by format."""
    output_dir = Path(output_dir)
    paths = {"json": output_dir / JSON_FILE, "png": output_dir / PLOT_FILE, "markdown": output_dir / MARKDOWN_FILE}
    # Compact separators: the traces hold max_iter + 1 entries per series, which indentation would put one per line.
    write_atomic(paths["json"], (json.dumps(report_to_dict(report), separators=(",", ":")) + "\n").encode())
    write_atomic(paths["png"], render_png(report))
    write_atomic(paths["markdown"], render_markdown(report, PLOT_FILE).encode())
    log.info("report written to %s", paths["markdown"])
    return paths


def load_report(path: str | Path) -> Report:
    """Read a ``report.json`` written by :func:`write_report`."""
    return report_from_dict(json.loads(Path(path).read_text()))


def make_report(
    models: Sequence[ModelEntry], output_dir: str | Path, config: ReportConfig | None = None
) -> tuple[Report, dict[str, Path]]:
    """Compute the report of ``models`` (see :func:`~unrolled.report.compute.compute_report`) and write its files."""
    report = compute_report(models, config)
    return report, write_report(report, output_dir)
