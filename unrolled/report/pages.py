"""Documentation pages that measured studies rewrite: marked sections, figures as PNG, and the header that names the run.

A study owns the text between ``<!-- TAG:NAME:begin -->`` and ``<!-- TAG:NAME:end -->`` on its page
and rewrites only that, so hand-written analysis outside the markers survives a rerun.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import torch
from matplotlib.figure import Figure

from unrolled.files import write_atomic
from unrolled.machine import describe_machine


def update_marked_sections(path: str | Path, sections: dict[str, str], *, tag: str, skeleton: str) -> None:
    """Replace the text between the begin and end markers of each named section of the page, and write it atomically.

    A missing page starts from ``skeleton``. Raises ``ValueError`` when the page lacks a section's markers.
    """
    path = Path(path)
    text = path.read_text() if path.exists() else skeleton
    for name, body in sections.items():
        begin, end = f"<!-- {tag}:{name}:begin -->", f"<!-- {tag}:{name}:end -->"
        pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), flags=re.DOTALL)
        if not pattern.search(text):
            raise ValueError(f"{path} has no {begin} ... {end} markers. Add them where the {name} study belongs.")
        # A function as replacement, so backslashes in the body are not read as group references.
        text = pattern.sub(lambda _: f"{begin}\n{body}\n{end}", text, count=1)
    write_atomic(path, text.encode())


def figure_png(figure: Figure) -> bytes:
    """Return ``figure`` as compressed PNG bytes at 80 dpi.

    At that resolution the stochastic studies' figures (two rows of 9 × 3.3 inches) took 136 KB and
    133 KB, under the 150 KB that the docs allow per figure.
    """
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80, pil_kwargs={"optimize": True})
    return buffer.getvalue()


def study_header(title: str, command: str, elapsed_s: float, quick: bool) -> str:
    """Return the section heading and the line that states the command, its run time and the machine."""
    machine = describe_machine()
    # The studies run on the CPU, so a GPU is only reported.
    gpu = f"{torch.cuda.get_device_name(0)} present but unused" if torch.cuda.is_available() else "no GPU"
    note = " Quick mode: small budgets for the tests, not the study's figures." if quick else ""
    return (
        f"## {title}\n\nMeasured with `{command}` in {elapsed_s:.0f} s on {machine['cpu']} "
        f"(nproc {machine['cpu_count']}), {gpu}, torch {machine['torch']}, torch threads {machine['torch_threads']}.{note}"
    )
