"""Speed-up of ``torch.compile`` on the unrolled networks: inference and training step, eager against compiled.

Each network has 16 layers on the 250 × 500 reference problem, in float32. Two passes are timed:
the forward pass on a batch of 1,000 test samples under ``torch.no_grad``, and a training step on
a batch of 256 (forward pass with the loss on the last layer, mean squared error, backward pass). The compiled
versions come from :func:`unrolled.compile.compile_or_eager` with torch's default backend
(inductor), as ``compile=true`` in train.py uses it. Compilation time, the first call of each
compiled function, is reported apart. It is much shorter when inductor's on-disk cache already
contains the kernels from an earlier run. Then eager and compiled calls are timed side by side in
interleaved rounds and the medians compared. A compiled function that fell back to eager mode
is marked in the table, and its speed-up is then about 1.

Run alone with ``python -m bench.compile_speedup`` (``--help`` lists the options). The last line
printed is the speed-up (eager time / compiled time) of every network's forward pass and training step.
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings

import torch

from bench.timing import BenchmarkResult, check_repeats, format_ms, run_standalone, time_side_by_side
from models import build_network
from unrolled.compile import CompileFallbackWarning, compile_or_eager
from unrolled.problems import SparseCoding

log = logging.getLogger(__name__)

NAME = "compile_speedup"
DEFAULT_NETWORKS = ("alista", "lista_cp")
N_LAYERS = 16
FORWARD_BATCH = 1000
TRAIN_BATCH = 256


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of this benchmark (the common ones come from :func:`bench.timing.add_common_arguments`)."""
    parser.add_argument(
        "--compile-networks", nargs="+", default=list(DEFAULT_NETWORKS),
        help=f"registered networks to compile (default {' '.join(DEFAULT_NETWORKS)})",
    )
    parser.add_argument(
        "--compile-backend", default="inductor",
        help="torch.compile backend (default inductor, the one train.py's compile=true uses; aot_eager skips code generation)",
    )


def _first_call_s(function) -> tuple[float, bool]:
    """Return the time of the first call (compilation included) and whether it fell back to eager mode."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CompileFallbackWarning)
        start = time.perf_counter()
        function()
        elapsed = time.perf_counter() - start
    return elapsed, any(issubclass(warning.category, CompileFallbackWarning) for warning in caught)


def run(args: argparse.Namespace) -> BenchmarkResult:
    """Compile each network, then time eager and compiled forward passes and training steps side by side."""
    check_repeats(args.repeats)
    device = torch.device(args.device)
    problem = SparseCoding(m=250, n=500, snr_db=40.0, n_test=FORWARD_BATCH)
    A = problem.A.to(device, torch.float32)
    y_test = problem.fixed_set("test")[0].to(device, torch.float32)
    y_train, x_train = (t.to(device, torch.float32) for t in problem.sample(TRAIN_BATCH, torch.Generator().manual_seed(0), "train"))

    result = BenchmarkResult(
        name=NAME,
        title="torch.compile against eager mode on the unrolled networks",
        description=__doc__.split("\n\n", 1)[1].rsplit("\n\nRun alone", 1)[0].replace("\n", " "),
        settings={
            "networks": args.compile_networks, "n_layers": N_LAYERS, "m": 250, "n": 500, "forward_batch": FORWARD_BATCH,
            "train_batch": TRAIN_BATCH, "repeats": args.repeats, "device": str(device), "torch_threads": torch.get_num_threads(),
            "backend": args.compile_backend, "torch": torch.__version__,
        },
        columns=["network", "pass", "compile time (s)", "eager (ms)", "compiled (ms)", "speed-up"],
    )
    speedups = []
    for name in args.compile_networks:
        network = build_network(name, A, N_LAYERS)
        compiled = compile_or_eager(network, f"network {name}", backend=args.compile_backend)

        def forward(function=network) -> None:
            with torch.no_grad():
                function(y_test)

        def train_step(function=network) -> None:
            network.zero_grad(set_to_none=True)
            loss = (function(y_train, all_layers=False)[-1] - x_train).square().mean()
            loss.backward()

        for label, eager_call, compiled_call in (
            ("forward", forward, lambda: forward(compiled)),
            ("training step", train_step, lambda: train_step(compiled)),
        ):
            compile_s, fell_back = _first_call_s(compiled_call)
            times = time_side_by_side({"eager": eager_call, "compiled": compiled_call}, args.repeats, device, label=f"{NAME} {name} {label}")
            speedup = times["eager"] / times["compiled"]
            speedups.append(f"{name} {label} {speedup:.2f}")
            result.rows.append([
                name, label, f"{compile_s:.1f}" + (" (failed, eager)" if fell_back else ""),
                format_ms(times["eager"]), format_ms(times["compiled"]), f"{speedup:.2f}",
            ])
    result.ratio_line = f"ratio {', '.join(speedups)} (eager time / compiled time, {N_LAYERS} layers, 250x500, {device})"
    return result


if __name__ == "__main__":
    run_standalone(f"python -m bench.{NAME}", __doc__.split("\n\n")[0], add_arguments, run, None)
