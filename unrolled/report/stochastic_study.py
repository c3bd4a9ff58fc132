r"""Two measured studies of the stochastic solvers: estimator variance near the optimum, and missing or noisy data.

Both studies solve ℓ2-regularised logistic regression (binary or multinomial) with an unpenalised
intercept, :math:`F(W) = \frac1n\sum_i \psi(\tilde x_i^\top W, y_i) + \frac{\mathrm{reg\_l2}}{2}\|W_{\mathrm{pen}}\|^2`
(:mod:`unrolled.problems.finite_sum`), in float64, with mini-batches of one sample drawn with
probability :math:`p_i \propto L_i` (``sampling="importance"``). Every solver takes its default step,
a fixed fraction of :math:`1/L_b` with :math:`L_b` the expected smoothness of one draw
(:mod:`unrolled.solvers.stochastic`): 1 for SGD, 1/3 for SVRG, L-SVRG and SAGA, 1/2 for SARAH.

**Variance** (:func:`run_variance_study`). SGD with a constant step, SVRG, L-SVRG, SAGA and SARAH run
for a fixed number of epochs. After every epoch the trace stores
:math:`\mathbb E\|\hat g - \nabla f(W)\|^2`, the mean squared distance between the method's
estimate of the data gradient and the exact one over fresh draws. For unbiased estimators it is the
variance. For SARAH, whose estimate is biased, it is the mean squared error. Variance reduction
(Johnson and Zhang, NeurIPS 2013, and Defazio, Bach and Lacoste-Julien, NeurIPS 2014) makes it vanish
as the iterate approaches the optimum. SGD's estimate keeps the variance of the sample gradients at
the optimum, so a constant step stalls at a noise floor.

**Robustness** (:func:`run_robustness_study`). The training problem is corrupted in one of two
ways, each at several fractions. Missing features: a fraction of the entries of both splits is
masked completely at random and filled by :func:`~unrolled.problems.datasets.impute`, with the
training column means (``mean``) or with 0 (``zero``). Label noise: a fraction of the training
labels moves to another class, and the test split stays clean. On each corrupted problem, SGD with
decreasing steps :math:`\gamma_0/(1 + e)` after e epochs, SVRG, SAGA and SARAH run until
:math:`F - F^\star \le` ``tol`` or the epoch budget ends. The study records the epochs and gradient
evaluations they needed and the test accuracy of their last iterate.

:math:`F^\star` of every problem is the value at the end of a float64 L-BFGS run
(:class:`torch.optim.LBFGS` with a strong Wolfe line search) on the full objective
(:func:`reference_optimum`).

Run ``python -m unrolled.report.stochastic_study {variance,robustness,all} [--output-dir docs] [--quick]``.
It writes ``figures/stochastic_variance.png`` and ``figures/stochastic_robustness.png`` under the
output folder and rewrites the marked sections of ``stochastic.md`` there, which keeps any text
outside the markers. ``--quick`` runs breast cancer alone with small budgets, for the tests.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from torch import Tensor

from unrolled.files import write_atomic
from unrolled.report.pages import figure_png, study_header, update_marked_sections
from unrolled.problems.datasets import Dataset, corrupt_labels, impute, load_dataset, mask_features
from unrolled.problems.finite_sum import FiniteSum
from unrolled.solvers.saga import saga
from unrolled.solvers.sarah import sarah
from unrolled.solvers.sgd import sgd
from unrolled.solvers.stochastic import Sampler, StochasticResult
from unrolled.solvers.svrg import svrg

log = logging.getLogger(__name__)

PAGE_FILE = "stochastic.md"
VARIANCE_FIGURE = "figures/stochastic_variance.png"
ROBUSTNESS_FIGURE = "figures/stochastic_robustness.png"
SAMPLING = "importance"
SOLVER_SEED = 0
SOLVER_COLORS = {"SGD": "tab:gray", "SVRG": "tab:blue", "L-SVRG": "tab:cyan", "SAGA": "tab:orange", "SARAH": "tab:green"}
SOLVER_MARKERS = {"SGD": "o", "SVRG": "s", "SAGA": "^", "SARAH": "D"}
# Thinner than matplotlib's 1.5, which with the noisy SGD and L-SVRG curves kept the PNG files near 150 KB.
LINE_WIDTH = 1.2

Solver = Callable[..., StochasticResult]
VARIANCE_SOLVERS: dict[str, Solver] = {
    "SGD": partial(sgd, schedule="constant"),
    "SVRG": svrg,
    "L-SVRG": partial(svrg, loopless=True),
    "SAGA": saga,
    "SARAH": sarah,
}
ROBUSTNESS_SOLVERS: dict[str, Solver] = {"SGD": partial(sgd, schedule="inverse"), "SVRG": svrg, "SAGA": saga, "SARAH": sarah}


@dataclass(frozen=True)
class Reference:
    """The reference optimum of one problem: the L-BFGS iterate W, F* = F(W), ‖∇F(W)‖ and the objective evaluations spent."""

    W: Tensor
    f_star: float
    grad_norm: float
    n_evals: int


def reference_optimum(problem: FiniteSum, *, max_evals: int, grad_tol: float = 1e-10) -> Reference:
    """Minimise the smooth objective of ``problem`` with L-BFGS in the problem's dtype and return the point it reached.

    Stops once every entry of the gradient is at most ``grad_tol`` in absolute value, or after
    ``max_evals`` evaluations of the objective and gradient (:class:`torch.optim.LBFGS`, history 50,
    strong Wolfe line search). The objective and gradient are those of ``problem`` itself, so F*
    is on the same scale as the solvers' traces.
    """
    if problem.reg != 0.0:
        raise ValueError(f"reference_optimum needs a smooth objective (reg = 0), got reg={problem.reg}.")
    W = problem.zeros()
    optimiser = torch.optim.LBFGS(
        [W],
        lr=1.0,
        max_iter=max_evals,
        max_eval=max_evals,
        tolerance_grad=grad_tol,
        tolerance_change=0.0,
        history_size=50,
        line_search_fn="strong_wolfe",
    )
    n_evals = 0

    def closure() -> Tensor:
        nonlocal n_evals
        n_evals += 1
        # The gradient is analytic, so W needs no autograd graph: L-BFGS only reads W.grad.
        W.grad = problem.gradient(W)
        return torch.tensor(problem.objective(W), dtype=torch.float64)

    optimiser.step(closure)
    gradient = problem.gradient(W)
    return Reference(W=W.detach(), f_star=problem.objective(W), grad_norm=float(torch.linalg.vector_norm(gradient)), n_evals=n_evals)


def classification_accuracy(dataset: Dataset, W: Tensor) -> float:
    """Return the fraction of test samples whose predicted class (sign of the margin, or its argmax) is the label.

    W includes the intercept row, as the problems built with ``fit_intercept=True`` do.
    """
    X = dataset.X_test.to(W.dtype)
    margins = X @ W[:-1] + W[-1]
    if dataset.loss == "logistic":
        predicted = torch.where(margins[:, 0] > 0, 1, -1)
    else:
        predicted = margins.argmax(dim=1)
    return float((predicted == dataset.y_test).to(torch.float64).mean())


# Study 1: estimator variance.


def sgd_variance(problem: FiniteSum, W: Tensor, sampling: str) -> float:
    r"""Return the exact variance of SGD's one-sample estimate at W: :math:`\sum_i \|\tilde x_i g_i^\top\|^2/(n^2 p_i) - \|\nabla f(W)\|^2`.

    :math:`\nabla f` is the data gradient and :math:`p_i` the sampling probabilities of
    :class:`~unrolled.solvers.stochastic.Sampler`. One pass over all samples, so unlike the traced
    entries it has no sampling error. At W* it is σ*², the variance that does not vanish at the optimum
    and sets the noise floor of SGD with a constant step.
    """
    sampler = Sampler(problem, 1, sampling, seed=0)
    if sampler.probabilities is None:
        probabilities = torch.full((problem.n_samples,), 1.0 / problem.n_samples, dtype=torch.float64)
    else:
        probabilities = sampler.probabilities
    derivatives = problem.all_derivatives(W).to(torch.float64)
    # ‖x̃_i g_iᵀ‖_F² = ‖x̃_i‖² ‖g_i‖² for the outer product of a sample's features and its derivative.
    squared_norms = (problem.features.to(torch.float64) ** 2).sum(dim=1) * (derivatives**2).sum(dim=1)
    probabilities = probabilities.to(squared_norms.device)
    # A sample with p_i = 0 (L_i = 0, so x̃_i = 0 or weight 0) has a zero gradient and is never drawn.
    terms = torch.where(probabilities > 0, squared_norms / probabilities, torch.zeros_like(squared_norms))
    second_moment = terms.sum() / problem.n_samples**2
    return float(second_moment - (problem.data_gradient(W).to(torch.float64) ** 2).sum())


@dataclass(frozen=True)
class VarianceSetting:
    """One data set of the variance study: its ``reg_l2``, epochs, variance draws per epoch and L-BFGS budget."""

    dataset: str
    reg_l2: float
    max_epochs: int
    variance_draws: int
    reference_evals: int


@dataclass
class VarianceResult:
    """Traces of every solver on one data set, with the reference optimum, SGD's exact variance there, and the problem size."""

    setting: VarianceSetting
    n_samples: int
    dim: int
    n_outputs: int
    reference: Reference
    sgd_variance_at_optimum: float
    runs: dict[str, StochasticResult] = field(default_factory=dict)

    def variance_after(self, solver: str, epoch: int) -> float:
        """Return the solver's variance entry after ``epoch`` epochs (-1: the last)."""
        return self.runs[solver].trace.variance[epoch]


# Single-sample estimates are heavy-tailed: a few large draws carry most of the variance. In 30 epochs
# of SGD on breast cancer (reg_l2 = 1e-3, importance sampling), the entries from 100 draws ranged from
# 0.002 to 1, those from 400 draws from 0.15 to 0.76, and the exact value (sgd_variance) from 0.35 to 0.57.
VARIANCE_SETTINGS = (
    VarianceSetting("breast_cancer", reg_l2=1e-3, max_epochs=100, variance_draws=1000, reference_evals=2000),
    # L-BFGS converges slowly on MNIST (L / reg_l2 is about 4e4), so the evaluation budget, not the
    # gradient tolerance, ends that run. A one-off run of 4,750 evaluations ended 7e-9 lower.
    VarianceSetting("mnist5k", reg_l2=1e-3, max_epochs=50, variance_draws=400, reference_evals=800),
)
QUICK_VARIANCE_SETTINGS = (VarianceSetting("breast_cancer", reg_l2=1e-3, max_epochs=20, variance_draws=400, reference_evals=500),)


def run_variance_study(settings: Sequence[VarianceSetting] = VARIANCE_SETTINGS) -> list[VarianceResult]:
    """Run every solver of :data:`VARIANCE_SOLVERS` with a variance trace on each setting's training problem."""
    results = []
    for setting in settings:
        dataset = load_dataset(setting.dataset)
        problem = dataset.problem("train", reg_l2=setting.reg_l2, fit_intercept=True)
        reference = reference_optimum(problem, max_evals=setting.reference_evals)
        log.info("%s: F* = %.12g, ‖∇F‖ = %.2e after %d L-BFGS evaluations",
                 setting.dataset, reference.f_star, reference.grad_norm, reference.n_evals)
        floor = sgd_variance(problem, reference.W, SAMPLING)
        result = VarianceResult(setting, problem.n_samples, problem.dim, problem.n_outputs, reference, floor)
        for name, solver in VARIANCE_SOLVERS.items():
            start = time.perf_counter()
            result.runs[name] = solver(
                problem,
                sampling=SAMPLING,
                max_epochs=setting.max_epochs,
                f_star=reference.f_star,
                trace=True,
                variance_draws=setting.variance_draws,
                seed=SOLVER_SEED,
                backend="auto",
            )
            log.info("%s %s: variance %.2e after epoch 1, %.2e after the last (%.1f s)", setting.dataset, name,
                     result.variance_after(name, 1), result.variance_after(name, -1), time.perf_counter() - start)
        _warn_below_reference(setting.dataset, reference, result.runs)
        results.append(result)
    return results


def _warn_below_reference(label: str, reference: Reference, runs: dict[str, StochasticResult]) -> None:
    """Log a warning when a solver went below F* by more than rounding, which means the reference is not the optimum."""
    for name, run in runs.items():
        lowest = min(run.trace.suboptimality)
        if lowest < -1e-12 * max(1.0, abs(reference.f_star)):
            log.warning("%s: %s reached F - F* = %.2e < 0, so F* from L-BFGS is not accurate to that level. "
                        "Raise reference_evals.", label, name, lowest)


def plot_variance(results: Sequence[VarianceResult]) -> Figure:
    """Draw, per data set, F - F* and the estimator variance against epochs 1 .. max_epochs, log scale."""
    figure = Figure(figsize=(9.0, 3.3 * len(results)), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(results), 2, squeeze=False)
    for row, result in zip(axes, results):
        for name, run in result.runs.items():
            trace = run.trace
            # Entry 0 is 0 for the variance-reduced methods, whose memory starts at W0, and a log scale cannot show it.
            epochs = trace.epoch[1:]
            gap = [value if value > 0 else float("nan") for value in trace.suboptimality[1:]]
            style = {"color": SOLVER_COLORS[name], "label": name, "linewidth": LINE_WIDTH}
            row[0].plot(epochs, gap, **style)
            row[1].plot(epochs, trace.variance[1:], **style)
        row[1].axhline(result.sgd_variance_at_optimum, color="black", linestyle="--", linewidth=0.8, label="SGD at W*, exact")
        row[0].set_ylabel("F(W) − F*")
        row[1].set_ylabel("E‖ĝ − ∇f(W)‖²")
        row[0].set_title(f"{result.setting.dataset} (n = {result.n_samples}, reg_l2 = {result.setting.reg_l2:g}): suboptimality",
                         fontsize="medium")
        row[1].set_title(f"{result.setting.dataset}: estimator variance", fontsize="medium")
        for ax in row:
            ax.set_yscale("log")
            ax.set_xlabel("epoch")
            ax.grid(True, which="major", alpha=0.3)
    # Below the panels, where it hides no curve.
    figure.legend(*axes[0][1].get_legend_handles_labels(), loc="outside lower center", ncols=6, fontsize="small")
    return figure


def variance_section(results: Sequence[VarianceResult], header: str) -> str:
    """Return the generated markdown of the variance study: settings, figure and the table of variances."""
    lines = [
        header,
        "",
        "Settings:",
        "",
        "- ℓ2-regularised logistic regression on the training split, with an unpenalised intercept, in float64. The binary "
        "loss has one output, the multinomial loss one per class.",
        f"- One sample per step, drawn with p_i ∝ L_i (`sampling=\"{SAMPLING}\"`), seed 0.",
        "- Default steps: 1/L_b for SGD with a constant step, 1/(3 L_b) for SVRG, L-SVRG and SAGA, 1/(2 L_b) for SARAH.",
        "- F* is the objective at the end of a float64 L-BFGS run (torch.optim.LBFGS, strong Wolfe line search). The run "
        "stops when the largest gradient entry is at most 1e-10 or at its evaluation budget.",
        "",
        "| data set | n × dim × outputs | reg_l2 | epochs | draws per entry | F* (L-BFGS) | ‖∇F‖ at F* | L-BFGS evaluations | SGD's exact variance at W* |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        setting, reference = result.setting, result.reference
        lines.append(
            f"| {setting.dataset} | {result.n_samples} × {result.dim} × {result.n_outputs} | {setting.reg_l2:g} | {setting.max_epochs} "
            f"| {setting.variance_draws} | {reference.f_star:.12g} | {reference.grad_norm:.1e} | {reference.n_evals} "
            f"| {result.sgd_variance_at_optimum:.2e} |"
        )
    lines += [
        "",
        f"![F − F* and estimator variance against epochs]({VARIANCE_FIGURE})",
        "",
        "Variance is the mean over fresh draws of ‖ĝ − ∇f(W)‖², the squared distance between the estimate and the exact data "
        "gradient (SARAH's estimate is biased, so for SARAH it is the mean squared error). At W0 the memory of the "
        "variance-reduced methods (snapshot, table or full gradient) is exact, so their entry 0 is 0. The ratio therefore "
        "compares the last entry with the one after epoch 1.",
        "",
        "| data set | solver | variance at W0 | variance after epoch 1 | variance after the last epoch | last / epoch 1 "
        "| F − F* after the last epoch | backend |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        for name, run in result.runs.items():
            first, last = result.variance_after(name, 1), result.variance_after(name, -1)
            lines.append(
                f"| {result.setting.dataset} | {name} | {result.variance_after(name, 0):.2e} | {first:.2e} | {last:.2e} | {last / first:.1e} "
                f"| {run.trace.suboptimality[-1]:.2e} | {run.backend} |"
            )
    return "\n".join(lines)


# Study 2: missing features and label noise.


@dataclass(frozen=True)
class Corruption:
    """One way of corrupting a data set: ``clean``, ``missing`` (with an impute ``strategy``) or ``label_noise``, at ``fraction``."""

    kind: str
    fraction: float = 0.0
    strategy: str | None = None

    @property
    def label(self) -> str:
        """Short description for tables, such as ``20 % missing, mean``."""
        if self.kind == "clean":
            return "clean"
        percent = f"{100 * self.fraction:g} %"
        if self.kind == "missing":
            return f"{percent} missing, {self.strategy}"
        return f"{percent} label noise"

    def apply(self, dataset: Dataset, seed: int) -> Dataset:
        """Return ``dataset`` with this corruption: masked and imputed features in both splits, or noisy training labels."""
        if self.kind == "clean":
            return dataset
        if self.kind == "missing":
            # Both splits lose entries, because a deployed model meets the same missing data. Their masks differ.
            X_train = mask_features(dataset.X_train, self.fraction, seed=seed)
            X_test = mask_features(dataset.X_test, self.fraction, seed=seed + 1)
            X_train, X_test = impute(X_train, X_test, self.strategy)
            return dataclasses.replace(dataset, X_train=X_train, X_test=X_test)
        if self.kind == "label_noise":
            y_train, _ = corrupt_labels(dataset.y_train, self.fraction, dataset.classes, seed=seed)
            return dataclasses.replace(dataset, y_train=y_train)
        raise ValueError(f"unknown corruption kind {self.kind!r}: expected 'clean', 'missing' or 'label_noise'.")


def corruptions(fractions: Sequence[float]) -> list[Corruption]:
    """Return the clean problem, then each fraction missing with ``mean`` and ``zero`` imputation, then each fraction of label noise."""
    conditions = [Corruption("clean")]
    conditions += [Corruption("missing", fraction, strategy) for fraction in fractions for strategy in ("mean", "zero")]
    conditions += [Corruption("label_noise", fraction) for fraction in fractions]
    return conditions


@dataclass(frozen=True)
class RobustnessSetting:
    """The grid of the robustness study: data sets, ``reg_l2``, corruption fractions, epoch budget and target suboptimality."""

    datasets: tuple[str, ...]
    reg_l2: float
    fractions: tuple[float, ...]
    max_epochs: int
    tol: float = 1e-6
    corruption_seed: int = 1
    reference_evals: int = 3000


@dataclass(frozen=True)
class SolverOutcome:
    """One solver on one corrupted problem: epochs and gradient evaluations to reach ``tol`` (None: not in budget), last gap, test accuracy."""

    solver: str
    epochs_to_tol: int | None
    grad_evals_to_tol: int | None
    final_suboptimality: float
    accuracy: float


@dataclass(frozen=True)
class ConditionResult:
    """All solvers on one corrupted problem, with its reference optimum and that optimum's test accuracy."""

    corruption: Corruption
    reference: Reference
    optimum_accuracy: float
    outcomes: tuple[SolverOutcome, ...]


@dataclass
class RobustnessResult:
    """Every condition of one data set."""

    dataset: str
    setting: RobustnessSetting
    conditions: list[ConditionResult] = field(default_factory=list)

    def condition(self, corruption: Corruption) -> ConditionResult:
        """Return the result of ``corruption``. Raises ``KeyError`` when the study did not run it."""
        for condition in self.conditions:
            if condition.corruption == corruption:
                return condition
        raise KeyError(f"{self.dataset} has no result for {corruption.label!r}.")


# reg_l2 = 3e-3 is close to scikit-learn's default C = 1 on breast cancer (1/426 = 2.3e-3) and
# lets the clean digits problem reach 1e-6 within the budget at the default steps.
ROBUSTNESS_SETTING = RobustnessSetting(datasets=("breast_cancer", "digits"), reg_l2=3e-3, fractions=(0.1, 0.2, 0.4), max_epochs=400)
QUICK_ROBUSTNESS_SETTING = RobustnessSetting(datasets=("breast_cancer",), reg_l2=3e-3, fractions=(0.4,), max_epochs=100, reference_evals=500)


def run_robustness_study(setting: RobustnessSetting = ROBUSTNESS_SETTING) -> list[RobustnessResult]:
    """Run every solver of :data:`ROBUSTNESS_SOLVERS` on every corrupted training problem of every data set."""
    results = []
    for name in setting.datasets:
        clean = load_dataset(name)
        result = RobustnessResult(name, setting)
        for corruption in corruptions(setting.fractions):
            dataset = corruption.apply(clean, setting.corruption_seed)
            problem = dataset.problem("train", reg_l2=setting.reg_l2, fit_intercept=True)
            reference = reference_optimum(problem, max_evals=setting.reference_evals)
            outcomes = tuple(_solve_to_tol(solver, problem, dataset, reference, setting) for solver in ROBUSTNESS_SOLVERS)
            condition = ConditionResult(corruption, reference, classification_accuracy(dataset, reference.W), outcomes)
            log.info("%s, %s: %s", name, corruption.label,
                     ", ".join(f"{o.solver} {o.epochs_to_tol} epochs, accuracy {o.accuracy:.3f}" for o in outcomes))
            result.conditions.append(condition)
        results.append(result)
    return results


def _solve_to_tol(solver: str, problem: FiniteSum, dataset: Dataset, reference: Reference, setting: RobustnessSetting) -> SolverOutcome:
    """Run one solver until F - F* <= tol or the budget ends, and summarise the run."""
    run = ROBUSTNESS_SOLVERS[solver](
        problem,
        sampling=SAMPLING,
        max_epochs=setting.max_epochs,
        tol=setting.tol,
        f_star=reference.f_star,
        trace=True,
        seed=SOLVER_SEED,
        backend="auto",
    )
    gap = run.trace.suboptimality[-1]
    reached = gap <= setting.tol
    return SolverOutcome(
        solver=solver,
        epochs_to_tol=run.n_epochs if reached else None,
        grad_evals_to_tol=run.trace.grad_evals[-1] if reached else None,
        final_suboptimality=gap,
        accuracy=classification_accuracy(dataset, run.W),
    )


KIND_STYLES = {"label_noise": ("label noise", "-"), "mean": ("missing, mean", "--"), "zero": ("missing, zero", ":")}


def plot_robustness(results: Sequence[RobustnessResult]) -> Figure:
    """Draw, per data set, epochs to reach ``tol`` and test accuracy against the corrupted fraction, per solver and corruption."""
    figure = Figure(figsize=(9.0, 3.3 * len(results)), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(results), 2, squeeze=False)
    for row, result in zip(axes, results):
        clean = result.condition(Corruption("clean"))
        for style_key, (_, linestyle) in KIND_STYLES.items():
            kind, strategy = ("label_noise", None) if style_key == "label_noise" else ("missing", style_key)
            series = [(0.0, clean)] + [(c.corruption.fraction, c) for c in result.conditions
                                        if c.corruption.kind == kind and c.corruption.strategy == strategy]
            fractions = [fraction for fraction, _ in series]
            for index, solver in enumerate(ROBUSTNESS_SOLVERS):
                epochs = [c.outcomes[index].epochs_to_tol for _, c in series]
                style = {"color": SOLVER_COLORS[solver], "marker": SOLVER_MARKERS[solver], "linestyle": linestyle, "markersize": 4,
                         "linewidth": LINE_WIDTH}
                # A run that missed the target leaves a gap in the line instead of a made-up count.
                row[0].plot(fractions, [float("nan") if e is None else e for e in epochs], **style)
                row[1].plot(fractions, [c.outcomes[index].accuracy for _, c in series], **style)
        row[0].set_ylabel(f"epochs to F − F* ≤ {result.setting.tol:g}")
        row[1].set_ylabel("test accuracy, last iterate")
        row[0].set_title(f"{result.dataset}: epochs to reach the target (no point: not in {result.setting.max_epochs})", fontsize="medium")
        row[1].set_title(f"{result.dataset}: test accuracy (clean test labels)", fontsize="medium")
        for ax in row:
            ax.set_xlabel("fraction of entries missing / of training labels changed")
            ax.grid(True, alpha=0.3)
    handles = [Line2D([], [], color=SOLVER_COLORS[s], marker=SOLVER_MARKERS[s], label=s) for s in ROBUSTNESS_SOLVERS]
    handles += [Line2D([], [], color="black", linestyle=linestyle, label=label) for label, linestyle in KIND_STYLES.values()]
    figure.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize="small")
    return figure


def robustness_section(results: Sequence[RobustnessResult], header: str) -> str:
    """Return the generated markdown of the robustness study: settings, figure and one table per data set."""
    setting = results[0].setting
    solvers = list(ROBUSTNESS_SOLVERS)
    largest_gradient = max(condition.reference.grad_norm for result in results for condition in result.conditions)
    lines = [
        header,
        "",
        "Settings:",
        "",
        f"- ℓ2-regularised logistic regression with reg_l2 = {setting.reg_l2:g} and an unpenalised intercept, in float64.",
        f"- One sample per step, drawn with p_i ∝ L_i, seed 0. The corruptions use seed {setting.corruption_seed}.",
        "- Default steps. SGD starts at 1/L_b and divides it by 1 + e after e epochs.",
        f"- Budget {setting.max_epochs} epochs, target F − F* ≤ {setting.tol:g} on each corrupted training problem. Each problem "
        f"has its own F* from L-BFGS, and the largest ‖∇F‖ at the end of these runs was {largest_gradient:.1e}.",
        "- Missing entries are masked completely at random in both splits, with different masks. They are filled with the "
        "training column means (`mean`) or with 0 (`zero`). For a linear model 0 is the masked loss: the margin x̃ᵀW sums "
        "over the observed features only.",
        "- Label noise moves training labels to a uniformly drawn other class. The test split stays clean.",
        "",
        f"![epochs to reach the target and test accuracy against the corrupted fraction]({ROBUSTNESS_FIGURE})",
        "",
        "Each epochs cell reads `epochs (gradient evaluations)` to reach the target. A run that did not reach it shows "
        "`not in budget` and its F − F* after the last epoch. Accuracy is on the test split, for the last iterate of each solver "
        "and for the L-BFGS optimum.",
    ]
    for result in results:
        lines += [
            "",
            f"**{result.dataset}**",
            "",
            "| training data | " + " | ".join(f"{s}: epochs" for s in solvers) + " | optimum accuracy | "
            + " | ".join(f"{s} accuracy" for s in solvers) + " |",
            "|---" * (2 + 2 * len(solvers)) + "|",
        ]
        for condition in result.conditions:
            cells = [_epochs_cell(outcome) for outcome in condition.outcomes]
            accuracies = [f"{outcome.accuracy:.3f}" for outcome in condition.outcomes]
            lines.append(f"| {condition.corruption.label} | " + " | ".join(cells) + f" | {condition.optimum_accuracy:.3f} | "
                         + " | ".join(accuracies) + " |")
    return "\n".join(lines)


def _epochs_cell(outcome: SolverOutcome) -> str:
    if outcome.epochs_to_tol is None:
        return f"not in budget ({outcome.final_suboptimality:.1e})"
    return f"{outcome.epochs_to_tol} ({outcome.grad_evals_to_tol:,})"


# The page: generated sections between markers, hand-written text around them.

SECTIONS = ("variance", "robustness")
PAGE_SKELETON = """# Stochastic and variance-reduced solvers: measured studies

<!-- stochastic_study:variance:begin -->
<!-- stochastic_study:variance:end -->

<!-- stochastic_study:robustness:begin -->
<!-- stochastic_study:robustness:end -->

## Solvers against scikit-learn

## Unrolled SVRG and SAGA
"""


def update_page(path: str | Path, sections: dict[str, str]) -> None:
    """Rewrite the named study sections of the stochastic page (see :func:`~unrolled.report.pages.update_marked_sections`)."""
    update_marked_sections(path, sections, tag="stochastic_study", skeleton=PAGE_SKELETON)


def write_study(
    study: str, output_dir: str | Path, *, quick: bool = False
) -> tuple[list[VarianceResult] | list[RobustnessResult], str]:
    """Run ``variance`` or ``robustness``, write its figure and page section under ``output_dir``, and return its results and markdown."""
    output_dir = Path(output_dir)
    command = f"python -m unrolled.report.stochastic_study {study}" + (" --quick" if quick else "")
    start = time.perf_counter()
    if study == "variance":
        results = run_variance_study(QUICK_VARIANCE_SETTINGS if quick else VARIANCE_SETTINGS)
        figure, figure_file, render = plot_variance(results), VARIANCE_FIGURE, variance_section
        title = "Estimator variance near the optimum"
    elif study == "robustness":
        results = run_robustness_study(QUICK_ROBUSTNESS_SETTING if quick else ROBUSTNESS_SETTING)
        figure, figure_file, render = plot_robustness(results), ROBUSTNESS_FIGURE, robustness_section
        title = "Missing features and label noise"
    else:
        raise ValueError(f"unknown study {study!r}: expected one of {', '.join(SECTIONS)}.")
    section = render(results, study_header(title, command, time.perf_counter() - start, quick))
    write_atomic(output_dir / figure_file, figure_png(figure))
    update_page(output_dir / PAGE_FILE, {study: section})
    log.info("%s study written to %s and %s", study, output_dir / PAGE_FILE, output_dir / figure_file)
    return results, section


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m unrolled.report.stochastic_study", description=__doc__.splitlines()[0])
    parser.add_argument("study", choices=(*SECTIONS, "all"), help="the study to run (all: both, one after the other)")
    parser.add_argument("--output-dir", default="docs", help="folder, relative to the current directory, whose stochastic.md (its study sections) and figures/ are rewritten (default: docs)")
    parser.add_argument("--quick", action="store_true", help="breast cancer only, small budgets (about 20 s), for the tests")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    studies = SECTIONS if args.study == "all" else (args.study,)
    for study in studies:
        _, section = write_study(study, args.output_dir, quick=args.quick)
        print(section + "\n")


if __name__ == "__main__":
    main()
