"""Shared pieces of the benchmarks: thread set-up, side-by-side timing, the machine description and results."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

import unrolled.machine

log = logging.getLogger(__name__)

DEFAULT_REPEATS = 5


@dataclass
class BenchmarkResult:
    """Results of one benchmark, ready to print and to render as a section of ``docs/benchmarks.md``.

    Attributes:
        name: module name, for example ``"ista_throughput"``.
        title: section title.
        description: what is measured and how, in Markdown.
        settings: sizes and options of the run, as plain values.
        columns: table header.
        rows: table cells, already formatted.
        ratio_line: the summary line, printed last.
        notes: extra lines printed and rendered under the table.
    """

    name: str
    title: str
    description: str
    settings: dict[str, Any]
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    ratio_line: str = ""
    notes: list[str] = field(default_factory=list)

    def print_text(self) -> None:
        """Print the settings, the table, the notes and, as the last line, the ratio line."""
        print(f"{self.title}")
        print("settings: " + ", ".join(f"{key}={value}" for key, value in self.settings.items()))
        if self.rows:
            widths = [max(len(cell) for cell in column) for column in zip(self.columns, *self.rows)]
            for cells in [self.columns, *self.rows]:
                print("  ".join(cell.rjust(width) for cell, width in zip(cells, widths)))
        for note in self.notes:
            print(note)
        print(self.ratio_line)


def available_cores() -> int:
    """Return the number of CPU cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def configure_threads(threads: int | None) -> int:
    """Set ``torch.set_num_threads`` to ``threads`` (all available cores when None) and return the value torch reports."""
    threads = available_cores() if threads is None else threads
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}.")
    torch.set_num_threads(threads)
    return torch.get_num_threads()


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options every benchmark takes: threads, repeats and device."""
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all available cores)")
    parser.add_argument(
        "--repeats", type=int, default=DEFAULT_REPEATS,
        help=f"timed rounds after one warm-up round; each figure is the median (default {DEFAULT_REPEATS})",
    )
    parser.add_argument("--device", default="cpu", help="torch device of the computation (default cpu)")


def check_repeats(repeats: int) -> None:
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}.")


def time_side_by_side(
    functions: dict[str, Callable[[], object]],
    repeats: int,
    device: torch.device | str = "cpu",
    label: str = "",
) -> dict[str, float]:
    """Return the median wall-clock in seconds of each function, measured in interleaved rounds.

    One untimed warm-up round runs first (allocation, kernel selection, caches). Then each of the
    ``repeats`` rounds calls every function once, in order, timed by ``time.perf_counter``, so that
    a change of machine load during the run affects all functions alike. On CUDA every call is
    timed up to a device synchronisation.
    """
    check_repeats(repeats)
    device = torch.device(device)
    durations: dict[str, list[float]] = {name: [] for name in functions}

    for round_index in range(repeats + 1):
        for name, function in functions.items():
            _synchronize(device)
            start = time.perf_counter()
            function()
            _synchronize(device)
            if round_index > 0:
                durations[name].append(time.perf_counter() - start)
        log.info("%s round %d/%d done%s", label, round_index, repeats, " (warm-up)" if round_index == 0 else "")

    return {name: statistics.median(values) for name, values in durations.items()}


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def describe_machine(device: torch.device | str = "cpu") -> dict[str, Any]:
    """Return the CPU model, core count, torch threads, torch version, GPU of ``device`` and the load average, as plain values.

    The load average (1, 5 and 15 minutes, from ``os.getloadavg``) shows whether other work shared
    the machine while the benchmarks ran.
    """
    machine = unrolled.machine.describe_machine(device)
    return {
        "cpu": machine["cpu"],
        "cores": available_cores(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": machine["python"],
        "gpu": machine["gpu"],
        "load_average": [round(value, 2) for value in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }


def format_ms(seconds: float) -> str:
    """Format a duration in seconds as milliseconds: 3 decimals below 10 ms, 1 below 100 ms, none above."""
    milliseconds = seconds * 1e3
    if milliseconds >= 100:
        return f"{milliseconds:.0f}"
    if milliseconds >= 10:
        return f"{milliseconds:.1f}"
    return f"{milliseconds:.3f}"


def run_standalone(prog: str, description: str, add_arguments: Callable[[argparse.ArgumentParser], None], run: Callable, argv: list[str] | None) -> None:
    """Parse the command line of one benchmark run alone, set the threads, run it and print its result."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_common_arguments(parser)
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    configure_threads(args.threads)
    run(args).print_text()


def run_in_fresh_process(module_name: str, args: argparse.Namespace) -> BenchmarkResult:
    """Set the threads and logging, then run the benchmark ``module_name`` with ``args``.

    ``python -m bench`` calls it in a new process per benchmark; it lives here because a function of
    ``bench/__main__.py`` cannot be found by name in that process.
    """
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    configure_threads(args.threads)
    return importlib.import_module(module_name).run(args)
