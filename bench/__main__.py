"""Run every benchmark in one process and rewrite ``docs/benchmarks.md`` from the results.

``python -m bench`` (the ``make bench`` target) runs every module of :data:`BENCHMARKS` in turn,
each in a fresh process with the same torch thread count, prints each table with its ratio line,
and writes the page atomically. A fresh process per benchmark keeps one benchmark's state out of
the next one's timings: run in one process after the others, the Lightning benchmark measured
LISTA-CP's Lightning training at 0.874 times the plain loop's speed, and alone at 0.993. ``--help`` lists the sizes; the defaults are those of
the modules.
"""

from __future__ import annotations

import argparse
import logging
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from bench import (
    compile_speedup,
    ista_throughput,
    lasso_vs_sklearn,
    lightning_overhead,
    stochastic_vs_sklearn,
    training_memory,
    unrolled_vs_fista,
)
from bench.page import render_page
from bench.timing import add_common_arguments, configure_threads, describe_machine, run_in_fresh_process
from unrolled.files import write_atomic

log = logging.getLogger("bench")

BENCHMARKS = (
    ista_throughput,
    lasso_vs_sklearn,
    unrolled_vs_fista,
    lightning_overhead,
    training_memory,
    compile_speedup,
    stochastic_vs_sklearn,
)
DEFAULT_OUTPUT = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def build_parser() -> argparse.ArgumentParser:
    names = ", ".join(module.NAME for module in BENCHMARKS)
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__.split("\n\n")[0],
        epilog=f"Benchmarks, in order: {names}. Each runs alone as python -m bench.<name>; python -m bench.gpu_check "
        "is the separate check for a machine with a GPU.",
    )
    add_common_arguments(parser)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help=f"page to write (default {DEFAULT_OUTPUT})")
    for module in BENCHMARKS:
        module.add_arguments(parser.add_argument_group(module.NAME))
    return parser


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    configure_threads(args.threads)

    started = datetime.now(timezone.utc)
    start = time.perf_counter()
    machine_start = describe_machine(args.device)
    results = []
    for module in BENCHMARKS:
        log.info("running %s", module.NAME)
        with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as executor:
            result = executor.submit(run_in_fresh_process, module.__name__, args).result()
        result.print_text()
        print()
        results.append(result)

    run_info = {
        "command": shlex.join(["python", "-m", "bench", *argv]),
        "started": started.isoformat(timespec="seconds"),
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "duration_s": time.perf_counter() - start,
        "machine_start": machine_start,
        "machine_end": describe_machine(args.device),
    }
    write_atomic(args.output, render_page(results, run_info).encode())
    print(f"wrote {args.output} ({run_info['duration_s']:.0f} s)")
    for result in results:
        print(f"{result.name}: {result.ratio_line}")


if __name__ == "__main__":
    main()
