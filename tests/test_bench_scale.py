"""Benchmarks of scale run at small sizes: training memory, torch.compile, and the GPU check's CPU columns."""

from __future__ import annotations

import argparse
import re
import sys

import pytest

from bench import compile_speedup, gpu_check, training_memory
from bench.timing import add_common_arguments


def _args(module, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_common_arguments(parser)
    module.add_arguments(parser)
    return parser.parse_args(argv)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the CPU peak is read from /proc (Linux)")
def test_training_memory_table(single_torch_thread):
    args = _args(training_memory, ["--memory-size", "200", "400", "--depths", "2", "4", "--memory-batches", "64", "128",
                                   "--checkpoint-every", "2", "--repeats", "1"])

    result = training_memory.run(args)

    assert len(result.rows) == 2 * 2 * 2
    assert [row[:3] for row in result.rows[:2]] == [["2", "64", "off"], ["2", "64", "every 2"]]
    peaks = {(row[0], row[1], row[2]): float(row[3]) for row in result.rows}
    assert peaks["4", "128", "off"] > peaks["2", "128", "off"] > 0
    ratio = float(re.match(r"ratio (\S+) \(peak memory", result.ratio_line).group(1))
    # The table rounds to 0.1 MiB, the ratio uses bytes.
    assert ratio == pytest.approx(peaks["4", "128", "every 2"] / peaks["4", "128", "off"], rel=0.05)


def test_compile_speedup_table(single_torch_thread):
    args = _args(compile_speedup, ["--compile-networks", "alista", "--compile-backend", "aot_eager", "--repeats", "1"])

    result = compile_speedup.run(args)

    assert [row[:2] for row in result.rows] == [["alista", "forward"], ["alista", "training step"]]
    assert all("failed" not in row[2] for row in result.rows)
    assert result.ratio_line.startswith("ratio alista forward ")
    for row in result.rows:
        assert float(row[5]) == pytest.approx(float(row[3]) / float(row[4]), rel=0.05)


def test_gpu_check_cpu_columns(single_torch_thread, tmp_path):
    output = tmp_path / "gpu_check.md"
    argv = ["--device", "cpu", "--steps", "2", "--size", "20", "40", "--fista-problems", "30", "--cpu-fista-iter", "5",
            "--output", str(output)]

    gpu_check.main(argv)

    page = output.read_text()
    assert "| ALISTA-16 training (steps/s) |" in page
    assert "| FISTA, 30 problems (ms/iter) |" in page
    assert "Result line: `ratio not measured (no GPU" in page


def test_gpu_check_without_cuda_raises(tmp_path, capsys):
    if gpu_check.torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(SystemExit):
        gpu_check.main(["--device", "cuda", "--output", str(tmp_path / "page.md")])

    assert "needs a CUDA device, and torch sees none; pass --device cpu" in capsys.readouterr().err
