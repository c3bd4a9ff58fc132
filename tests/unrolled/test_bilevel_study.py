"""The bilevel studies in quick mode: their numbers, figures and the page they rewrite."""

from __future__ import annotations

import re

import pytest
import torch

from unrolled.bilevel import study

pytestmark = pytest.mark.usefixtures("single_torch_thread")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FAST_STUDIES = ("accuracy", "memory", "selection", "cleaning")


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """Run the four fast studies once (about 20 s on one thread) into a page with hand-written text around the markers."""
    output_dir = tmp_path_factory.mktemp("bilevel_study")
    (output_dir / study.PAGE_FILE).write_text("Hand-written introduction.\n\n" + study.PAGE_SKELETON + "\n\nHand-written conclusion.\n")
    # A module fixture runs before the function-scoped single_torch_thread, so it sets the thread count
    # itself: on a loaded 2-core machine, two threads made these studies several times slower.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        sections = {name: study.write_study(name, output_dir, quick=True) for name in FAST_STUDIES}
    finally:
        torch.set_num_threads(previous)
    return output_dir, sections


def _table_rows(section: str, first_cell: str) -> list[list[str]]:
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in section.splitlines() if line.startswith(f"| {first_cell}")]


def test_page_keeps_hand_written_text(written):
    """The page keeps the hand-written text around the markers and contains every section and figure."""
    output_dir, sections = written
    page = (output_dir / study.PAGE_FILE).read_text()
    assert page.startswith("Hand-written introduction.")
    assert page.rstrip().endswith("Hand-written conclusion.")
    for name, section in sections.items():
        assert section in page
        assert "Quick mode" in section
    for figure in ("bilevel_accuracy.png", "bilevel_memory.png", "bilevel_cleaning_digits.png"):
        assert (output_dir / "figures" / figure).read_bytes().startswith(PNG_SIGNATURE)


def test_accuracy_table_errors(written):
    """Exact methods have relative errors below 1e-4, and truncation has errors over 10 times larger."""
    _, sections = written
    for problem in ("breast cancer", "digits hyper-cleaning", "diabetes"):
        rows = {row[1]: float(row[2]) for row in _table_rows(sections["accuracy"], problem)}
        assert rows["implicit, conjugate gradient"] < 1e-4
        assert rows["implicit, dense solve"] < 1e-4
        truncated = next(value for method, value in rows.items() if method.startswith("truncated"))
        assert truncated > 10 * rows["implicit, conjugate gradient"]


def test_memory_table_depth_growth(written):
    """In the memory table, only reverse mode grows with depth."""
    _, sections = written
    rows = {row[0]: [float(re.match(r"([0-9.]+) MiB", cell).group(1)) for cell in row[1:]] for row in _table_rows(sections["memory"], "")[1:]}
    assert rows["reverse mode"][-1] > 2 * rows["reverse mode"][0]
    assert rows["implicit (CG) at z_K"][-1] == rows["implicit (CG) at z_K"][0]
    assert max(rows["truncated, last 10"]) == min(rows["truncated, last 10"])


def test_cleaning_table_columns(written):
    """At p = 0.5, clean-only training beats uniform weights, and the last column is SABA's median minus clean-only."""
    _, sections = written
    (row,) = _table_rows(sections["cleaning"], "0.5")
    medians = [float(cell.split()[0]) for cell in row[1:7]]
    clean, uniform = medians[0], medians[1]
    assert clean < uniform
    assert float(row[7]) == pytest.approx(medians[2] - clean, abs=0.051)


def test_unknown_study_raises(tmp_path):
    with pytest.raises(ValueError, match="unknown study 'memroy'"):
        study.write_study("memroy", tmp_path, quick=True)


@pytest.mark.slow
@pytest.mark.parametrize("name", ("variance", "network"))
def test_slow_studies_run_in_quick_mode(tmp_path, name):
    section = study.write_study(name, tmp_path, quick=True)
    assert section.startswith("## ")
    assert (tmp_path / study.PAGE_FILE).exists()
