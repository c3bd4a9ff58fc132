r"""Measured studies of the bilevel module, written to ``docs/bilevel.md`` and ``docs/figures/bilevel_*.png``.

- ``accuracy``: every hypergradient against central finite differences on three real problems, and
  the error of implicit and reverse-mode hypergradients as the inner solve tightens.
- ``memory``: peak memory of the tensors that autograd saves (:class:`~unrolled.memory.SavedTensorMemory`)
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
- ``scale``: SABA and SOBA on hyper-cleaning of the synthetic logistic data set, 135,000 training
  samples and as many hyperparameters.
- ``network``: ALISTA-16's per-layer steps and thresholds learned as hyperparameters with the full
  reverse-mode hypergradient (end-to-end training), truncated to the last 4 layers, and checkpointed,
  beside the Lasso weight learned by implicit differentiation and solved by FISTA
  (:mod:`unrolled.bilevel.network`), on the 250 × 500 sparse-coding problem at SNR 40 dB.

Run ``python -m unrolled.bilevel.study {accuracy,memory,selection,variance,cleaning,scale,network,all} [--quick] [--output-dir docs]``.
Each study is a module of this package with ``TITLE``, ``run(quick)``, ``figures(result)`` and ``section(result, header)``.
Each study rewrites its marked section of ``bilevel.md`` (text outside the markers is kept) and
its figure. ``--quick`` uses small budgets and digits in place of MNIST, for the tests.
"""


from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from unrolled.bilevel.study import accuracy, cleaning, memory, network, scale, selection, variance
from unrolled.files import write_atomic
from unrolled.report.pages import figure_png, study_header, update_marked_sections

log = logging.getLogger(__name__)

PAGE_FILE = "bilevel.md"
TAG = "bilevel_study"
MODULES = {
    "accuracy": accuracy,
    "memory": memory,
    "selection": selection,
    "variance": variance,
    "cleaning": cleaning,
    "scale": scale,
    "network": network,
}
STUDIES = tuple(MODULES)
PAGE_SKELETON = "# Bilevel optimisation: measured studies\n\n" + "\n\n".join(
    f"<!-- {TAG}:{name}:begin -->\n<!-- {TAG}:{name}:end -->" for name in STUDIES
)


def write_study(study: str, output_dir: str | Path, *, quick: bool = False) -> str:
    """Run one study, write its figures and its section of ``bilevel.md`` under ``output_dir``, and return the section."""
    if study not in MODULES:
        raise ValueError(f"unknown study {study!r}: expected one of {', '.join(STUDIES)}.")
    module = MODULES[study]
    output_dir = Path(output_dir)
    command = f"python -m unrolled.bilevel.study {study}" + (" --quick" if quick else "")
    start = time.perf_counter()
    result = module.run(quick)
    section = module.section(result, study_header(module.TITLE, command, time.perf_counter() - start, quick))
    for name, figure in module.figures(result).items():
        write_atomic(output_dir / name, figure_png(figure))
    update_marked_sections(output_dir / PAGE_FILE, {study: section}, tag=TAG, skeleton=PAGE_SKELETON)
    log.info("%s study written to %s", study, output_dir / PAGE_FILE)
    return section


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m unrolled.bilevel.study",
        description="Run the measured studies of the bilevel module and rewrite their sections of bilevel.md and their figures.",
        epilog="Studies: " + "; ".join(f"{name}: {module.TITLE}" for name, module in MODULES.items())
        + ". The full studies take from about a minute (accuracy, memory) to about 50 minutes (cleaning) on one CPU core.",
    )
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
