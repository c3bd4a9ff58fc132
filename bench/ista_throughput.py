r"""Batched ISTA and FISTA throughput against the two matrix products that each of their iterations needs.

An iteration on a batch X of shape (batch, n) computes :math:`XA^\top` (batch × n by n × m) and
:math:`RA` (batch × m by m × n), plus elementwise work: the residual, the gradient step and the
soft-threshold. The benchmark times :func:`unrolled.solvers.ista` and :func:`unrolled.solvers.fista`
(untraced, a fixed ``max_iter``, the default step 1/L) and, in the same interleaved rounds, the two
products alone written into preallocated outputs (``torch.mm(..., out=...)``). The ratio

    GEMM time / solver time per iteration

is 1.0 when the elementwise work costs nothing; below 1 it is the fraction of an iteration spent
in the products. The solver time per iteration is the time of the whole call divided by
``max_iter``. It therefore includes the fixed cost of a call (the power iteration for L, the input
checks), which the table also shows alone as the time of a call with ``max_iter = 0``.

Data: the reference sparse-coding problem (A of 250 × 500 with unit-norm Gaussian columns), the
first ``batch`` samples of its test set at SNR 40 dB, ``reg = 3e-3``, in float32 and float64.
The throughput does not depend on ``reg`` or on the data, because every operation is dense.

Run alone with ``python -m bench.ista_throughput`` (``--help`` lists the sizes). The last line
printed is the float32 ISTA ratio.
"""

from __future__ import annotations

import argparse
import logging

import torch

from bench.timing import (
    BenchmarkResult,
    check_repeats,
    format_ms,
    run_standalone,
    time_side_by_side,
)
from unrolled.problems import SparseCoding
from unrolled.solvers import fista, ista

log = logging.getLogger(__name__)

NAME = "ista_throughput"
DEFAULT_BATCH = 1000
DEFAULT_SIZE = (250, 500)
DEFAULT_ITERS = 200
REG = 3e-3
SNR_DB = 40.0
DTYPES = {"float32": torch.float32, "float64": torch.float64}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of this benchmark (the common ones come from :func:`bench.timing.add_common_arguments`)."""
    parser.add_argument("--batch", type=int, default=DEFAULT_BATCH, help=f"samples per batch (default {DEFAULT_BATCH})")
    parser.add_argument(
        "--size", type=int, nargs=2, default=DEFAULT_SIZE, metavar=("M", "N"),
        help=f"operator size m × n (default {DEFAULT_SIZE[0]} {DEFAULT_SIZE[1]})",
    )
    parser.add_argument(
        "--iters", type=int, default=DEFAULT_ITERS,
        help=f"max_iter of each timed solver call, and products per timed GEMM block (default {DEFAULT_ITERS})",
    )


def run(args: argparse.Namespace) -> BenchmarkResult:
    """Measure both solvers and the GEMM pair in float32 and float64, and return the table."""
    check_repeats(args.repeats)
    if args.batch < 1 or args.iters < 1 or min(args.size) < 1:
        raise ValueError(f"batch, iters and size must be positive, got batch={args.batch}, iters={args.iters}, size={args.size}.")
    m, n = args.size
    device = torch.device(args.device)
    problem = SparseCoding(m=m, n=n, snr_db=SNR_DB, n_test=args.batch)
    y_test, _ = problem.fixed_set("test")

    result = BenchmarkResult(
        name=NAME,
        title="ISTA and FISTA iterations against the GEMMs they need",
        description=_description(m, n, args),
        settings={
            "m": m, "n": n, "batch": args.batch, "max_iter": args.iters, "reg": REG, "snr_db": SNR_DB,
            "repeats": args.repeats, "device": str(device), "torch_threads": torch.get_num_threads(),
        },
        columns=[
            "dtype", "GEMM pair (ms)", "GEMM GFLOP/s", "ISTA (ms/iter)", "GEMM/ISTA",
            "FISTA (ms/iter)", "GEMM/FISTA", "call set-up (ms)",
        ],
    )
    ratios = {}
    for dtype_name, dtype in DTYPES.items():
        timings = _measure(problem.A.to(device, dtype), y_test.to(device, dtype), args.iters, args.repeats, device, dtype_name)
        gemm = timings["gemm_pair"]
        ratios[dtype_name] = gemm / timings["ista_iter"]
        gflops = 2 * 2 * args.batch * m * n / gemm / 1e9
        result.rows.append([
            dtype_name, format_ms(gemm), f"{gflops:.0f}",
            format_ms(timings["ista_iter"]), f"{ratios[dtype_name]:.2f}",
            format_ms(timings["fista_iter"]), f"{gemm / timings['fista_iter']:.2f}",
            format_ms(timings["setup"]),
        ])

    result.notes.append(
        "GEMM/ISTA = time of the two products of one iteration / time of one ISTA iteration; "
        "1.0 would mean that the elementwise work costs nothing."
    )
    result.ratio_line = (
        f"ratio {ratios['float32']:.3f} (GEMM time / ISTA iteration time, float32, "
        f"batch {args.batch}, {m}x{n}, torch threads {torch.get_num_threads()})"
    )
    return result


def _measure(A: torch.Tensor, y: torch.Tensor, iters: int, repeats: int, device: torch.device, label: str) -> dict[str, float]:
    """Time the solvers and the GEMM pair side by side and return seconds per iteration, per pair and per set-up."""
    batch, (m, n) = y.shape[0], A.shape
    x = torch.randn(batch, n, dtype=A.dtype, generator=torch.Generator().manual_seed(0)).to(device)
    residual = torch.randn(batch, m, dtype=A.dtype, generator=torch.Generator().manual_seed(1)).to(device)
    image_out = torch.empty(batch, m, dtype=A.dtype, device=device)
    gradient_out = torch.empty(batch, n, dtype=A.dtype, device=device)

    def gemm_pairs() -> None:
        for _ in range(iters):
            torch.mm(x, A.T, out=image_out)
            torch.mm(residual, A, out=gradient_out)

    medians = time_side_by_side(
        {
            "gemm_pairs": gemm_pairs,
            "ista": lambda: ista(A, y, REG, max_iter=iters),
            "fista": lambda: fista(A, y, REG, max_iter=iters),
            "setup": lambda: ista(A, y, REG, max_iter=0),
        },
        repeats,
        device,
        label=f"{NAME} {label}",
    )
    return {
        "gemm_pair": medians["gemm_pairs"] / iters,
        "ista_iter": medians["ista"] / iters,
        "fista_iter": medians["fista"] / iters,
        "setup": medians["setup"],
    }


def _description(m: int, n: int, args: argparse.Namespace) -> str:
    return (
        f"Batched `unrolled.solvers.ista` and `fista` on the reference problem ({m} × {n}, batch {args.batch}, "
        f"reg {REG}, test samples at SNR {SNR_DB:g} dB), untraced, `max_iter = {args.iters}`, default step 1/L. "
        "Each solver time per iteration is the median time of a whole call divided by `max_iter`, so it includes "
        "the fixed cost of a call (power iteration for L, input checks), shown alone as *call set-up* "
        "(a call with `max_iter = 0`). *GEMM pair* is the time of the two products that one iteration needs, "
        f"({args.batch} × {n})·({n} × {m}) and ({args.batch} × {m})·({m} × {n}), written into preallocated outputs. "
        f"All of them run in the same interleaved rounds: one warm-up round, then the median of {args.repeats} timed rounds."
    )


def main(argv: list[str] | None = None) -> None:
    run_standalone("python -m bench.ista_throughput", __doc__.split("\n\n")[0], add_arguments, run, argv)


if __name__ == "__main__":
    main()
