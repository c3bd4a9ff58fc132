"""Wall-clock of each pretrained unrolled network against FISTA run to the same test accuracy.

For every shipped model (:func:`models.list_pretrained`) on its own test set:

1. The model's aggregate NMSE after its last layer is the target.
2. FISTA's ``reg`` is the value of the grid with the best aggregate validation NMSE after
   ``max_iter`` iterations (:func:`unrolled.report.classical.choose_reg`, the choice that the
   comparison reports make).
3. A traced FISTA run on the test set gives the first iteration count k whose estimate reaches the
   target, or none within ``max_iter``.
4. The forward pass through all layers and an untraced FISTA call of k iterations (``max_iter``
   when the target is not reached) are timed side by side in interleaved rounds.

The ratio is FISTA time / forward time: how many times longer FISTA takes to match the network.
When FISTA does not reach the target within ``max_iter``, the ratio is a lower bound, marked ">".
FISTA runs in the network's dtype (float32 for the shipped models) on the same device and
threads, with the default step 1/L; its time includes the power iteration for L, as a caller's
would. The forward pass returns the last layer's estimate only (``all_layers=False``), as FISTA
returns its last iterate only.

Run alone with ``python -m bench.unrolled_vs_fista`` (``--help`` lists the options). Models
are read from ``checkpoints/`` or ``$UNROLLED_ZOO_CHECKPOINTS``. The last line printed lists the
ratio of every model.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass

import torch

from bench.timing import (
    BenchmarkResult,
    check_repeats,
    format_ms,
    run_standalone,
    time_side_by_side,
)
from models.hub import checkpoints_dir, list_pretrained, load_pretrained
from unrolled.metrics import nmse_db
from unrolled.problems import Problem
from unrolled.report import DEFAULT_REG_GRID
from unrolled.report.classical import REACH_TOLERANCE_DB, choose_reg, iterations_to_reach
from unrolled.solvers import fista

log = logging.getLogger(__name__)

NAME = "unrolled_vs_fista"
DEFAULT_MAX_ITER = 1000
DEFAULT_VAL_SIZE = 256


@dataclass
class FistaBaseline:
    """FISTA on one problem: the chosen ``reg`` and the aggregate test NMSE in dB after each iteration count."""

    reg: float
    nmse_db: list[float]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of this benchmark (the common ones come from :func:`bench.timing.add_common_arguments`)."""
    parser.add_argument(
        "--max-iter", type=int, default=DEFAULT_MAX_ITER,
        help=f"maximum number of FISTA iterations, for the choice of reg and to reach a model's NMSE (default {DEFAULT_MAX_ITER})",
    )
    parser.add_argument(
        "--val-size", type=int, default=DEFAULT_VAL_SIZE,
        help=f"validation samples that score the reg grid (default {DEFAULT_VAL_SIZE})",
    )
    parser.add_argument(
        "--reg-grid", type=float, nargs="+", default=list(DEFAULT_REG_GRID),
        help="candidate values of reg (default: the grid of the comparison reports, 10 values from 1e-4 to 0.1)",
    )
    parser.add_argument("--models", nargs="+", default=None, help="pretrained model names (default: all shipped models)")


def run(args: argparse.Namespace) -> BenchmarkResult:
    """Compare every selected pretrained model with FISTA and return the table."""
    check_repeats(args.repeats)
    if args.max_iter < 1 or args.val_size < 1:
        raise ValueError(f"max_iter and val_size must be >= 1, got max_iter={args.max_iter}, val_size={args.val_size}.")
    device = torch.device(args.device)
    names = list_pretrained() if args.models is None else args.models

    result = BenchmarkResult(
        name=NAME,
        title="Unrolled forward pass against FISTA to the same test NMSE",
        description=_description(args),
        settings={
            "max_iter": args.max_iter, "val_size": args.val_size, "reg_grid": [f"{value:.3g}" for value in args.reg_grid],
            "repeats": args.repeats, "device": str(device), "torch_threads": torch.get_num_threads(),
        },
        columns=[
            "model", "layers", "dtype", "model NMSE (dB)", "FISTA reg", "FISTA iterations",
            "forward (ms)", "FISTA (ms)", "FISTA/forward",
        ],
    )
    if not names:
        message = f"no pretrained models found in {checkpoints_dir()}, so there is nothing to compare"
        log.warning(message)
        result.notes.append(message + ".")
        result.ratio_line = "ratio none (no pretrained models)"
        return result

    baselines: dict[str, FistaBaseline] = {}
    ratios = []
    for name in names:
        row, ratio = _compare_model(name, args, device, baselines)
        result.rows.append(row)
        ratios.append(f"{name} {ratio}")

    result.notes.append(
        "model NMSE: aggregate test NMSE after the last layer. FISTA iterations: the first count whose "
        f"aggregate test NMSE is at most the model's (within the {REACH_TOLERANCE_DB:g} dB tolerance of "
        f"`unrolled.report.classical.iterations_to_reach`). '> N' means not reached in N = {args.max_iter}, with FISTA's "
        "NMSE after N iterations in brackets, and then the ratio is a lower bound."
    )
    result.ratio_line = "ratio " + ", ".join(ratios) + " (FISTA time to the model's test NMSE / forward time)"
    return result


def _compare_model(
    name: str, args: argparse.Namespace, device: torch.device, baselines: dict[str, FistaBaseline]
) -> tuple[list[str], str]:
    """Measure one model against FISTA and return its table row and its formatted ratio."""
    loaded = load_pretrained(name)
    network = loaded.network.to(device)
    dtype = network.A.dtype
    problem = loaded.problem
    A = problem.A.to(device, dtype)
    y_test, x_test = (tensor.to(device, dtype) for tensor in problem.fixed_set("test"))

    with torch.inference_mode():
        target = float(nmse_db(network(y_test)[-1], x_test))
    baseline = _fista_baseline(problem, A, y_test, x_test, args, baselines)
    reached = iterations_to_reach(baseline.nmse_db, target)
    n_iter = args.max_iter if reached is None else reached
    log.info("%s: model NMSE %.2f dB, FISTA (reg %.3g) %s", name, target, baseline.reg,
             f"reaches it after {reached} iterations" if reached is not None else f"does not reach it in {args.max_iter}")

    def forward() -> None:
        with torch.inference_mode():
            network(y_test, all_layers=False)

    medians = time_side_by_side(
        {"forward": forward, "fista": lambda: fista(A, y_test, baseline.reg, max_iter=n_iter)},
        args.repeats,
        device,
        label=f"{NAME} {name}",
    )
    ratio = medians["fista"] / medians["forward"]
    ratio_text = f"{ratio:.1f}" if reached is not None else f">{ratio:.1f}"
    iterations_text = str(reached) if reached is not None else f"> {args.max_iter} ({baseline.nmse_db[-1]:.1f} dB)"
    row = [
        name, str(network.n_layers), str(dtype).removeprefix("torch."), f"{target:.2f}", f"{baseline.reg:.3g}",
        iterations_text, format_ms(medians["forward"]), format_ms(medians["fista"]), ratio_text,
    ]
    return row, ratio_text


def _fista_baseline(
    problem: Problem, A: torch.Tensor, y_test: torch.Tensor, x_test: torch.Tensor,
    args: argparse.Namespace, baselines: dict[str, FistaBaseline],
) -> FistaBaseline:
    """Choose FISTA's reg on the validation set and trace its test NMSE, once per problem and dtype."""
    key = json.dumps({"problem": problem.spec(), "dtype": str(A.dtype), "device": str(A.device)}, sort_keys=True, default=str)
    if key in baselines:
        return baselines[key]

    y_val, x_val = (tensor[: args.val_size].to(A.device, A.dtype) for tensor in problem.fixed_set("val"))
    reg = choose_reg("fista", A, y_val, x_val, args.reg_grid, args.max_iter).reg
    trace = fista(A, y_test, reg, max_iter=args.max_iter, x_true=x_test, trace=True).trace
    baselines[key] = FistaBaseline(reg, trace.nmse_db)
    return baselines[key]


def _description(args: argparse.Namespace) -> str:
    return (
        "For each pretrained model, on its own test set: the wall-clock of the forward pass through all its layers "
        "(returning the last layer's estimate, as FISTA returns its last iterate) against the wall-clock of the FISTA iterations that reach the model's aggregate test NMSE. FISTA's `reg` is the "
        f"value of the grid {', '.join(f'{value:.3g}' for value in args.reg_grid)} with the best aggregate NMSE on the "
        f"first {args.val_size} validation samples after {args.max_iter} iterations. FISTA runs in the network's dtype "
        "with step 1/L, and its time includes the power iteration for L. The forward pass and FISTA run in the same "
        f"interleaved rounds: one warm-up round, then the median of {args.repeats} timed rounds."
    )


def main(argv: list[str] | None = None) -> None:
    run_standalone("python -m bench.unrolled_vs_fista", __doc__.split("\n\n")[0], add_arguments, run, argv)


if __name__ == "__main__":
    main()
