"""Robustness table of inpainting models: ``python -m models.robustness --runs RUN ... [--pretrained NAME ...] --output DIR``.

Loads imaging models trained on inpainting tasks (run folders or shipped names), evaluates them
with :func:`unrolled.report.robustness.robustness_table` on the test images of the first model's
task across missing rates and noise levels, and writes ``robustness.json`` and ``robustness.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

from models.hub.imaging import load_imaging_pretrained, load_imaging_run
from unrolled.files import write_atomic
from unrolled.problems.imaging_tasks import InpaintingTask
from unrolled.report.robustness import render_robustness, robustness_table

log = logging.getLogger("models.robustness")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.robustness", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="*", default=[], help="run folders of train.py with inpainting models")
    parser.add_argument("--pretrained", nargs="*", default=[], help="names of shipped imaging models")
    parser.add_argument("--output", type=Path, required=True, help="folder for robustness.json and robustness.md")
    parser.add_argument("--max-iter", type=int, default=300, help="TV-ADMM iterations per setting (default 300)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if args.threads:
        torch.set_num_threads(args.threads)

    models = [load_imaging_run(path) for path in args.runs] + [load_imaging_pretrained(name) for name in args.pretrained]
    if not models:
        parser.error("no models: pass --runs RUN_DIR ... and/or --pretrained NAME ...")
    not_inpainting = [model.name for model in models if not isinstance(model.task, InpaintingTask)]
    if not_inpainting:
        parser.error(f"models {', '.join(not_inpainting)} were not trained on an inpainting task")

    networks = {model.name: model.network for model in models}
    table = robustness_table(networks, models[0].task, max_iter=args.max_iter, progress=log.info)
    table["models"] = {model.name: model.task.spec() for model in models}
    args.output.mkdir(parents=True, exist_ok=True)
    write_atomic(args.output / "robustness.json", (json.dumps(table, indent=1) + "\n").encode())
    write_atomic(args.output / "robustness.md", render_robustness(table).encode())
    print(render_robustness(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
