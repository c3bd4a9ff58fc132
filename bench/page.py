"""Render the results of one ``python -m bench`` run as the Markdown of ``docs/benchmarks.md``."""

from __future__ import annotations

from typing import Any

from bench.timing import BenchmarkResult


def render_page(results: list[BenchmarkResult], run_info: dict[str, Any]) -> str:
    """Return the Markdown page: how the run was made, on which machine, then one section per benchmark.

    ``run_info`` contains ``command``, ``started`` and ``finished`` (ISO dates), ``duration_s``, and
    ``machine_start`` and ``machine_end`` from :func:`bench.timing.describe_machine`.
    """
    machine = run_info["machine_start"]
    lines = [
        "# Benchmarks",
        "",
        "This page is written by `python -m bench` (the `make bench` target) from a single run. Rerun it "
        "instead of editing the page. Every figure below comes from the run described here, and each ratio "
        "compares timings measured side by side, in interleaved rounds of that run.",
        "",
        f"- Command: `{run_info['command']}`",
        f"- Date: {run_info['started']} to {run_info['finished']} ({run_info['duration_s']:.0f} s)",
        f"- CPU: {machine['cpu']}, {machine['cores']} cores available",
        f"- torch {machine['torch']}, torch threads: {machine['torch_threads']} (`torch.set_num_threads`), "
        f"Python {machine['python']}" + (f", GPU {machine['gpu']}" if machine["gpu"] else ""),
        f"- Load average over 1, 5 and 15 minutes: {_load(machine)} at the start, "
        f"{_load(run_info['machine_end'])} at the end. A load above the number of torch threads means "
        "that other processes shared the cores, which slows every measurement.",
        "",
        "Each benchmark also runs alone: `python -m bench.<name> --help` lists its sizes and options.",
    ]
    for result in results:
        lines += ["", *_render_section(result)]
    return "\n".join(lines) + "\n"


def _render_section(result: BenchmarkResult) -> list[str]:
    lines = [f"## {result.title}", "", f"`python -m bench.{result.name}`", "", result.description, ""]
    lines.append("Settings: " + ", ".join(f"`{key}={_plain(value)}`" for key, value in result.settings.items()) + ".")
    if result.rows:
        lines += ["", "| " + " | ".join(result.columns) + " |", "|" + "---|" * len(result.columns)]
        lines += ["| " + " | ".join(row) + " |" for row in result.rows]
    lines.append("")
    lines += [f"{note}" for note in result.notes]
    lines += ["", f"Result line: `{result.ratio_line}`"]
    return lines


def _plain(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(str(item) for item in value)
    return str(value)


def _load(machine: dict[str, Any]) -> str:
    load = machine.get("load_average")
    return "unknown" if load is None else ", ".join(f"{value:.2f}" for value in load)
