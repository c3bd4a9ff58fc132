r"""Wall-clock of batched FISTA against scikit-learn's ``Lasso`` (and celer and skglm) on 1,000 Lasso problems, each solved to a relative duality gap of 1e-6.

Problems: the reference sparse-coding problem (:class:`unrolled.problems.SparseCoding`, A of
250 × 500 with unit-norm Gaussian columns), its 1,000 test samples at SNR 40 dB, in float64. Each
sample y gives one Lasso problem

.. math:: F(x) = \tfrac12\|Ax - y\|^2 + \mathrm{reg}\,\|x\|_1,

which is scikit-learn's objective :math:`\tfrac1{2m}\|y - Aw\|^2 + \alpha\|w\|_1` times m, with
``alpha = reg / m`` and ``fit_intercept=False`` (celer and skglm use scikit-learn's scaling).

Two values of ``reg``, both from the grid of the comparison reports
(:data:`unrolled.report.DEFAULT_REG_GRID`): 0.00215, FISTA's best ``reg`` on this problem at SNR
40 dB (see :mod:`bench.unrolled_vs_fista`), whose solutions have about 180 non-zeros of 500, and
0.01, with about 90. Coordinate descent gains from sparsity: its gap safe screening drops the zero
coordinates, and it needs fewer epochs. A FISTA iteration costs the same dense products whatever
the support. The second value therefore shows how the ratio moves with sparsity.

Common target: every solver must return, for every problem, an x whose relative duality gap
:math:`\mathrm{gap}(x) / F(0)`, with :math:`F(0) = \tfrac12\|y\|^2`, is at most 1e-6. The gap is
:func:`unrolled.objectives.lasso_duality_gap` (dual point: the residual rescaled into the dual
feasible set), evaluated by this module on each solver's output, in float64. Relative to
:math:`F(0)` it matches scikit-learn's criterion, which stops coordinate descent when its own gap
(the same dual point) is at most ``tol`` · ‖y‖², so ``tol = 5e-7`` is the nominal match. celer
scales its ``tol`` the same way but certifies it with an extrapolated dual point, which is tighter
than the rescaled residual, so celer needs a smaller ``tol`` to pass this module's test. skglm's
``tol`` bounds a violation of the optimality conditions instead.

Settings: each peer runs with the loosest ``tol`` of the grid :math:`5\cdot10^{-7}\cdot10^{k/2}`
(integer k, and 1e-8 in place of 5e-7 for skglm) whose output reaches the target on every
problem. Fits found it beforehand, walking up the grid while they passed or down while they
failed. Because the grid steps by √10, a peer may run with a ``tol`` up to √10 tighter than the
loosest that passes. For a linearly converging solver that costs at most about
log(√10) / log(1e6) ≈ 8 % more epochs (an estimate). The peers' ``max_iter`` is raised so that
``tol`` alone stops them. scikit-learn fits the 1,000 problems in one ``fit`` with a 2-D target
(it solves them one after the other), celer's ``Lasso`` too (it inherits that ``fit``), and
skglm's ``Lasso`` (1-D targets only) in a loop of 1,000 fits.

FISTA (:func:`unrolled.solvers.fista`) runs the whole batch with ``gap_tol = 1e-6``, the same
gap, checked every ``--lasso-check-every`` iterations. Converged problems are frozen and removed
from the batch. It runs without restart, with gradient restart and with function restart
(O'Donoghue and Candès 2015). Its default step is 1/L, and its time includes the power iteration
for L.

Timing: ``time.perf_counter`` around the solve calls only (``fit`` for the peers, the ``fista``
call for ours), in interleaved rounds, the fastest of ``--lasso-best-of`` rounds for each solver. The
calibration fits run before and warm every solver up (skglm's numba compilation included). After
each timed call the output is checked against the target, outside the timed region. scikit-learn,
celer and skglm run on one thread; FISTA runs on the torch threads (``--threads``), and when there
are several the table adds FISTA with gradient restart on one thread. That row also shows when other
processes share the cores, because torch's threads then wait for each other. In one run at a load
average of 3.5 on 2 cores, FISTA on 2 threads took 3 times as long as on 1. A peer that fails to
import gets a row saying so.

Run alone with ``python -m bench.lasso_vs_sklearn`` (``--help`` lists the options). The last line
printed is the ratio FISTA-with-gradient-restart time / scikit-learn time at the first ``reg``,
followed by the same ratio at the others.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from types import ModuleType

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import Lasso

from bench.timing import BenchmarkResult, format_ms, run_standalone
from unrolled.objectives import lasso_duality_gap
from unrolled.problems import SparseCoding
from unrolled.report import DEFAULT_REG_GRID
from unrolled.solvers import fista

log = logging.getLogger(__name__)

NAME = "lasso_vs_sklearn"
TARGET_GAP = 1e-6
TARGET_TEXT = "1e-6"
SNR_DB = 40.0
DEFAULT_PROBLEMS = 1000
DEFAULT_SIZE = (250, 500)
# 0.00215 and 0.01 of the comparison reports' grid np.logspace(-4, -1, 10).
DEFAULT_REGS = (DEFAULT_REG_GRID[4], DEFAULT_REG_GRID[6])
DEFAULT_BEST_OF = 3
DEFAULT_MAX_ITER = 20_000
DEFAULT_CHECK_EVERY = 10
PEERS = ("celer", "skglm")
# Grid of the peers' tol: start · 10^(k/2). scikit-learn and celer stop at gap <= tol · ||y||², so
# 5e-7 is the nominal match of the target. skglm's tol bounds an optimality violation instead.
TOL_STARTS = {"scikit-learn": TARGET_GAP / 2, "celer": TARGET_GAP / 2, "skglm": 1e-8}
TOL_STEP = math.sqrt(10.0)
TOL_RANGE = (1e-14, 1e-1)
# Caps on the peers' own iteration counts, so high that only tol stops them.
PEER_MAX_ITER = 100_000
FISTA_RESTARTS = {"FISTA": None, "FISTA, gradient restart": "gradient", "FISTA, function restart": "function"}
HEADLINE_VARIANT = "FISTA, gradient restart"


@dataclass
class LassoProblems:
    """The problems of one ``reg``: A and the measurements in float64 on the CPU (for the peers and the gap checks) and on FISTA's device."""

    A: torch.Tensor
    y: torch.Tensor
    A_device: torch.Tensor
    y_device: torch.Tensor
    reg: float

    @property
    def alpha(self) -> float:
        """scikit-learn's alpha: reg divided by the number of rows of A."""
        return self.reg / self.A.shape[0]

    def relative_gaps(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Return gap(x) / F(0) of every problem, in float64 on the CPU: the one test every solver's output must pass."""
        x = torch.as_tensor(np.ascontiguousarray(x) if isinstance(x, np.ndarray) else x).to("cpu", torch.float64)
        gap = lasso_duality_gap(x, self.y, self.A, self.reg)
        return gap / (0.5 * self.y.square().sum(-1))


@dataclass
class PeerOutput:
    """Coefficients (problems × n) returned by a peer's fits, and scikit-learn's coordinate-descent epochs per problem."""

    x: np.ndarray
    n_iter: np.ndarray | None = None


@dataclass
class Measurement:
    """One row of the table: the solver, its stopping setting, its iteration counts and time, and its worst gap."""

    solver: str
    setting: str
    max_gap: float | None = None
    iterations: str = "-"
    time_s: float | None = None
    status: str = ""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of this benchmark (the common ones come from :func:`bench.timing.add_common_arguments`)."""
    parser.add_argument(
        "--lasso-problems", type=int, default=DEFAULT_PROBLEMS,
        help=f"number of Lasso problems, the first test samples (default {DEFAULT_PROBLEMS})",
    )
    parser.add_argument(
        "--lasso-size", type=int, nargs=2, default=DEFAULT_SIZE, metavar=("M", "N"),
        help=f"operator size m × n (default {DEFAULT_SIZE[0]} {DEFAULT_SIZE[1]})",
    )
    parser.add_argument(
        "--lasso-regs", type=float, nargs="+", default=list(DEFAULT_REGS),
        help="values of reg; the ratio line leads with the first (default: 0.00215 and 0.01 of the reports' grid)",
    )
    parser.add_argument(
        "--lasso-best-of", type=int, default=DEFAULT_BEST_OF,
        help=f"timed rounds, of which the table gives each solver's fastest (default {DEFAULT_BEST_OF})",
    )
    parser.add_argument(
        "--lasso-max-iter", type=int, default=DEFAULT_MAX_ITER,
        help=f"FISTA's max_iter; a problem still above the target gap then counts as not reached (default {DEFAULT_MAX_ITER})",
    )
    parser.add_argument(
        "--lasso-check-every", type=int, default=DEFAULT_CHECK_EVERY,
        help=f"FISTA iterations between two duality-gap checks (default {DEFAULT_CHECK_EVERY})",
    )
    parser.add_argument(
        "--lasso-peers", nargs="*", choices=PEERS, default=list(PEERS),
        help=f"other Lasso packages to measure besides scikit-learn; the option alone measures none (default: {' '.join(PEERS)})",
    )


def run(args: argparse.Namespace) -> BenchmarkResult:
    """Calibrate and time every solver at every ``reg`` and return the table."""
    _check_arguments(args)
    m, n = args.lasso_size
    device = torch.device(args.device)
    problem = SparseCoding(m=m, n=n, snr_db=SNR_DB, n_test=args.lasso_problems)
    y, _ = problem.fixed_set("test")
    A = problem.A.to(torch.float64)
    y = y.to(torch.float64)
    peers = {name: _import_peer(name) for name in args.lasso_peers}

    result = BenchmarkResult(
        name=NAME,
        title="Lasso: batched FISTA against scikit-learn's Lasso, celer and skglm, time to a relative duality gap of 1e-6",
        description=_description(args, m, n),
        settings={
            "problems": args.lasso_problems, "m": m, "n": n, "snr_db": SNR_DB,
            "regs": [f"{reg:.3g}" for reg in args.lasso_regs], "target_gap": TARGET_GAP, "dtype": "float64",
            "best_of": args.lasso_best_of, "fista_max_iter": args.lasso_max_iter,
            "check_every": args.lasso_check_every, "device": str(device), "torch_threads": torch.get_num_threads(),
            "scikit-learn": metadata.version("scikit-learn"),
            **{name: metadata.version(name) if module is not None else "not installed" for name, module in peers.items()},
        },
        columns=["reg", "solver", "setting", "iterations mean / max", "max gap / F(0)", "time (ms)", "time / scikit-learn"],
    )

    ratios = []
    for reg in args.lasso_regs:
        problems = LassoProblems(A, y, A.to(device), y.to(device), reg)
        ratios.append((reg, _compare(problems, peers, args, result)))

    first_reg, first_ratio = ratios[0]
    others = "".join(f"; reg {reg:.3g}: {ratio}" for reg, ratio in ratios[1:])
    result.ratio_line = (
        f"ratio {first_ratio} (FISTA time / scikit-learn Lasso time, {args.lasso_problems} problems {m}x{n}, "
        f"duality gap <= {TARGET_TEXT}, relative to F(0) = ||y||^2/2, reg {first_reg:.3g}, FISTA with gradient restart, "
        f"float64, torch threads {torch.get_num_threads()}{others})"
    )
    return result


def _check_arguments(args: argparse.Namespace) -> None:
    for option in ("lasso_problems", "lasso_best_of", "lasso_max_iter", "lasso_check_every"):
        if getattr(args, option) < 1:
            raise ValueError(f"--{option.replace('_', '-')} must be >= 1, got {getattr(args, option)}.")
    if min(args.lasso_size) < 1:
        raise ValueError(f"--lasso-size must be positive, got {args.lasso_size}.")
    if not args.lasso_regs or not all(math.isfinite(reg) and reg > 0 for reg in args.lasso_regs):
        raise ValueError(f"--lasso-regs must be finite values > 0, got {args.lasso_regs}.")


def _import_peer(name: str) -> ModuleType | None:
    """Return the peer's module, or None (with a warning) when it cannot be imported."""
    try:
        return importlib.import_module(name)
    except ImportError as error:
        log.warning("%s is not installed (%s); its rows say so. Install the 'bench' extra to measure it.", name, error)
        return None


def _compare(problems: LassoProblems, peers: dict[str, ModuleType | None], args: argparse.Namespace, result: BenchmarkResult) -> str:
    """Add the rows of one ``reg`` to ``result`` and return the formatted headline ratio."""
    label = f"reg {problems.reg:.3g}"
    measurements: dict[str, Measurement] = {}
    # The timed call of every solver that reached the target, and its output, for the support note.
    timed: dict[str, Callable[[], object]] = {}
    solutions: dict[str, torch.Tensor] = {}
    _calibrate_peers(problems, peers, measurements, timed, solutions)
    _calibrate_fista(problems, args, measurements, timed, solutions)

    best_times, max_gaps = _fastest_of_rounds(timed, problems, args.lasso_best_of, label)
    for name, time_s in best_times.items():
        measurements[name].time_s = time_s
        measurements[name].max_gap = max_gaps[name]
        if max_gaps[name] > TARGET_GAP:
            # The calibration run reached the target with the same setting, so the output changed between runs.
            measurements[name].status = "missed the target when timed"

    sklearn = measurements["scikit-learn"]
    sklearn_time = None if sklearn.status else sklearn.time_s
    for measurement in measurements.values():
        result.rows.append(_row(problems.reg, measurement, sklearn_time))
    result.notes.append(_support_note(problems, solutions))

    headline = measurements[HEADLINE_VARIANT]
    if sklearn_time is None or headline.time_s is None or headline.status:
        return "none (FISTA or scikit-learn did not reach the target)"
    return f"{headline.time_s / sklearn_time:.2f}"


def _calibrate_peers(
    problems: LassoProblems, peers: dict[str, ModuleType | None], measurements: dict[str, Measurement],
    timed: dict[str, Callable[[], object]], solutions: dict[str, torch.Tensor],
) -> None:
    """Find scikit-learn's and each peer's loosest passing tol, and add their measurements and timed calls."""
    solvers: dict[str, Callable[[float], PeerOutput] | None] = {"scikit-learn": _sklearn_fit(problems)}
    for name, module in peers.items():
        solvers[name] = None if module is None else _PEER_FITS[name](module, problems)

    for name, fit in solvers.items():
        solver = f"{name} Lasso"
        if fit is None:
            measurements[name] = Measurement(solver, "-", status="not installed")
            continue
        calibration = _loosest_tol(name, fit, problems)
        if calibration is None:
            measurements[name] = Measurement(solver, f"tol down to {TOL_RANGE[0]:g}", status="not reached")
            continue
        tol, output = calibration
        measurements[name] = Measurement(solver, f"tol {tol:.3g}", iterations=_iterations(output))
        timed[name] = _bind(fit, tol)
        solutions[name] = torch.from_numpy(output.x)


def _calibrate_fista(
    problems: LassoProblems, args: argparse.Namespace, measurements: dict[str, Measurement],
    timed: dict[str, Callable[[], object]], solutions: dict[str, torch.Tensor],
) -> None:
    """Run each FISTA variant once with the gap rule, check its output, and add its measurement and timed call.

    With several torch threads on the CPU, the headline variant is also timed on one thread.
    """
    for variant, restart in FISTA_RESTARTS.items():
        solve = _fista_solve(problems, args, restart)
        run_result = solve()
        max_gap = float(problems.relative_gaps(run_result.x).max())
        iterations = run_result.n_iter_per_sample.to(torch.float64)
        setting = f"gap_tol {TARGET_TEXT}, " + (f"{restart} restart" if restart else "no restart")
        measurements[variant] = Measurement(variant, setting, iterations=f"{iterations.mean():.0f} / {iterations.max():.0f}")
        log.info("reg %.3g: %s reaches max gap %.2e, iterations mean %.0f", problems.reg, variant, max_gap, float(iterations.mean()))
        if max_gap <= TARGET_GAP:
            timed[variant] = solve
            solutions[variant] = run_result.x.cpu()
        else:
            measurements[variant].status = f"not reached in {args.lasso_max_iter}"
            measurements[variant].max_gap = max_gap

    if torch.get_num_threads() > 1 and problems.A_device.device.type == "cpu" and HEADLINE_VARIANT in timed:
        single_thread = f"{HEADLINE_VARIANT}, 1 thread"
        headline = measurements[HEADLINE_VARIANT]
        measurements[single_thread] = Measurement(single_thread, headline.setting, iterations=headline.iterations)
        timed[single_thread] = _on_one_thread(timed[HEADLINE_VARIANT])


def _sklearn_fit(problems: LassoProblems) -> Callable[[float], PeerOutput]:
    """Return fit(tol) -> output of scikit-learn's Lasso on all problems, in one fit with a 2-D target."""
    A = np.asfortranarray(problems.A.numpy())
    # Fortran order, as scikit-learn's coordinate descent wants it, so that fit copies nothing.
    targets = np.asfortranarray(problems.y.numpy().T)

    def fit(tol: float) -> PeerOutput:
        model = Lasso(alpha=problems.alpha, fit_intercept=False, tol=tol, max_iter=PEER_MAX_ITER)
        model.fit(A, targets)
        return PeerOutput(np.atleast_2d(model.coef_), np.atleast_1d(model.n_iter_))

    return fit


def _celer_fit(celer: ModuleType, problems: LassoProblems) -> Callable[[float], PeerOutput]:
    """Return fit(tol) -> output of celer's Lasso, which inherits scikit-learn's fit with a 2-D target."""
    A = np.asfortranarray(problems.A.numpy())
    targets = np.asfortranarray(problems.y.numpy().T)

    def fit(tol: float) -> PeerOutput:
        model = celer.Lasso(alpha=problems.alpha, fit_intercept=False, tol=tol, max_iter=PEER_MAX_ITER)
        with warnings.catch_warnings():
            # A convergence warning adds nothing, because every output is checked against the target.
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(A, targets)
        return PeerOutput(np.atleast_2d(model.coef_))

    return fit


def _skglm_fit(skglm: ModuleType, problems: LassoProblems) -> Callable[[float], PeerOutput]:
    """Return fit(tol) -> output of skglm's Lasso, one fit per problem (its Lasso takes 1-D targets only)."""
    A = np.asfortranarray(problems.A.numpy())
    targets = problems.y.numpy()

    def fit(tol: float) -> PeerOutput:
        model = skglm.Lasso(alpha=problems.alpha, fit_intercept=False, tol=tol, max_iter=PEER_MAX_ITER)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            return PeerOutput(np.stack([model.fit(A, target).coef_.copy() for target in targets]))

    return fit


_PEER_FITS: dict[str, Callable[[ModuleType, LassoProblems], Callable[[float], PeerOutput]]] = {
    "celer": _celer_fit, "skglm": _skglm_fit,
}


def _loosest_tol(name: str, fit: Callable[[float], PeerOutput], problems: LassoProblems) -> tuple[float, PeerOutput] | None:
    """Return the loosest tol of the grid whose fit reaches the target on every problem, with that fit's output.

    The walk starts at ``TOL_STARTS[name]`` and moves by factors of sqrt(10): up while the fits pass,
    down while they fail. None when no tol in ``TOL_RANGE`` passes.
    """
    def passes(tol: float) -> tuple[bool, PeerOutput]:
        output = fit(tol)
        max_gap = float(problems.relative_gaps(output.x).max())
        log.info("reg %.3g: %s tol %.3g gives max gap / F(0) %.2e", problems.reg, name, tol, max_gap)
        return max_gap <= TARGET_GAP, output

    tol = TOL_STARTS[name]
    passed, output = passes(tol)
    if passed:
        best = (tol, output)
        while tol * TOL_STEP <= TOL_RANGE[1]:
            tol *= TOL_STEP
            passed, output = passes(tol)
            if not passed:
                break
            best = (tol, output)
        return best
    while tol / TOL_STEP >= TOL_RANGE[0]:
        tol /= TOL_STEP
        passed, output = passes(tol)
        if passed:
            return tol, output
    return None


def _iterations(output: PeerOutput) -> str:
    """Return scikit-learn's mean / max coordinate-descent epochs, or "-" for the peers, whose counts are of another kind."""
    return "-" if output.n_iter is None else f"{output.n_iter.mean():.0f} / {output.n_iter.max():.0f}"


def _bind(fit: Callable[[float], PeerOutput], tol: float) -> Callable[[], PeerOutput]:
    return lambda: fit(tol)


def _fista_solve(problems: LassoProblems, args: argparse.Namespace, restart: str | None) -> Callable[[], object]:
    def solve():
        return fista(
            problems.A_device, problems.y_device, problems.reg, max_iter=args.lasso_max_iter,
            gap_tol=TARGET_GAP, check_every=args.lasso_check_every, restart=restart,
        )

    return solve


def _on_one_thread(solve: Callable[[], object]) -> Callable[[], object]:
    """Return ``solve`` run with one torch thread, the previous count restored afterwards."""
    def single_threaded():
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return solve()
        finally:
            torch.set_num_threads(threads)

    return single_threaded


def _fastest_of_rounds(
    functions: dict[str, Callable[[], object]], problems: LassoProblems, rounds: int, label: str,
) -> tuple[dict[str, float], dict[str, float]]:
    """Return the fastest wall-clock of each function over ``rounds`` interleaved rounds, and the worst gap of its outputs.

    Interleaving spreads a change of machine load over all functions alike. A CUDA device is
    synchronised before the clock stops; the gap check runs after it.
    """
    best = {name: math.inf for name in functions}
    max_gaps = {name: 0.0 for name in functions}
    device = problems.A_device.device
    for round_index in range(1, rounds + 1):
        for name, function in functions.items():
            _synchronize(device)
            start = time.perf_counter()
            output = function()
            _synchronize(device)
            best[name] = min(best[name], time.perf_counter() - start)
            max_gaps[name] = max(max_gaps[name], float(problems.relative_gaps(output.x).max()))
        log.info("%s round %d/%d done", label, round_index, rounds)
    return best, max_gaps


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _row(reg: float, measurement: Measurement, sklearn_time: float | None) -> list[str]:
    gap = "-" if measurement.max_gap is None else f"{measurement.max_gap:.2e}"
    if measurement.status or measurement.time_s is None:
        return [f"{reg:.3g}", measurement.solver, measurement.setting, measurement.iterations, gap, measurement.status or "-", "-"]
    ratio = "-" if sklearn_time is None else f"{measurement.time_s / sklearn_time:.2f}"
    return [f"{reg:.3g}", measurement.solver, measurement.setting, measurement.iterations, gap, format_ms(measurement.time_s), ratio]


def _support_note(problems: LassoProblems, solutions: dict[str, torch.Tensor]) -> str:
    """Return a note with the mean support size of the first solver's solutions that reached the target."""
    if not solutions:
        return f"reg {problems.reg:.3g}: no solver reached the target."
    source, x = next(iter(solutions.items()))
    support = float((x != 0).sum(-1).to(torch.float64).mean())
    return f"reg {problems.reg:.3g}: {source}'s solutions have {support:.0f} non-zeros of {problems.A.shape[1]} on average."


def _description(args: argparse.Namespace, m: int, n: int) -> str:
    regs = ", ".join(f"{reg:.3g}" for reg in args.lasso_regs)
    return (
        f"{args.lasso_problems} Lasso problems F(x) = ½‖Ax − y‖² + reg‖x‖₁ on the reference sparse-coding problem "
        f"({m} × {n}, unit-norm Gaussian columns, the first {args.lasso_problems} test samples at SNR {SNR_DB:g} dB), "
        f"in float64, at reg {regs} (values of the comparison reports' grid; scikit-learn's alpha = reg / {m}). "
        f"Every solver must return, for every problem, an x with duality gap ≤ {TARGET_TEXT} · F(0), F(0) = ½‖y‖², "
        "computed by `unrolled.objectives.lasso_duality_gap` on its output (dual point: the residual rescaled into "
        "the feasible set, as in scikit-learn's coordinate descent).\n\n"
        "scikit-learn's `Lasso` (coordinate descent, one 2-D `fit`), celer's `Lasso` (same `fit`) and skglm's "
        "`Lasso` (one `fit` per problem) run with the loosest `tol` of the grid 5e-7 · 10^(k/2) (skglm: 1e-8 · "
        "10^(k/2)) whose output reaches the target on every problem, found beforehand. `unrolled.solvers.fista` "
        f"solves the whole batch with `gap_tol = {TARGET_TEXT}`, checking the gap every {args.lasso_check_every} "
        "iterations and removing converged problems from the batch, without restart and with O'Donoghue and "
        "Candès' gradient and function restarts; its time includes the power iteration for its step 1/L.\n\n"
        f"The time is the fastest of {args.lasso_best_of} interleaved rounds (`time.perf_counter` around the solve "
        "calls only), after the calibration runs, which warm every solver up. Each timed output is checked against "
        "the target afterwards (the max gap column). scikit-learn, celer and skglm are single-threaded; FISTA uses "
        "the torch threads, and a row gives FISTA with gradient restart on one thread when there are several. "
        "Iterations: coordinate-descent epochs for scikit-learn, iterations for FISTA (per problem, until it was "
        "frozen)."
    )


def main(argv: list[str] | None = None) -> None:
    run_standalone("python -m bench.lasso_vs_sklearn", __doc__.split("\n\n")[0], add_arguments, run, argv)


if __name__ == "__main__":
    main()
