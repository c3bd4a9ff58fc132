"""Plain-data results of a comparison report, and their conversion to and from JSON-ready dicts.

Every class here contains only numbers, strings, lists, dicts and other result classes, so
``report_from_dict(report_to_dict(report)) == report`` is exact after a JSON round trip
(Python's ``json`` writes floats with ``repr``, which round-trips). NaN, for example the NMSE of a
diverged network, is written as ``NaN``, the extension of JSON that Python's ``json`` reads back.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from unrolled.solvers.trace import Trace

SOLVERS = ("ista", "fista")


@dataclass
class RegChoice:
    """The ``reg`` used by one classical solver, and how it was chosen.

    Attributes:
        solver: ``"ista"`` or ``"fista"``.
        reg: the value used on the test set.
        fixed: True when ``reg`` was given by the caller and no grid was searched.
        grid: the candidate values (empty when ``fixed``).
        val_nmse_db: aggregate validation NMSE in dB after ``max_iter`` iterations, one per grid value.
        val_size: number of validation samples the grid was scored on (0 when ``fixed``).
    """

    solver: str
    reg: float
    fixed: bool
    grid: list[float] = field(default_factory=list)
    val_nmse_db: list[float] = field(default_factory=list)
    val_size: int = 0


@dataclass
class ClassicalRun:
    """A traced run of ISTA or FISTA on a test set, where ``trace`` entry k describes the iterate after k iterations."""

    solver: str
    reg: float
    max_iter: int
    trace: Trace


@dataclass
class IterationMetrics:
    """Test metrics of a classical solver after exactly ``n_iter`` iterations (``psnr_db`` None without a signal range)."""

    solver: str
    n_iter: int
    nmse_db: float
    nmse_db_per_sample: float
    psnr_db: float | None


@dataclass
class ProblemResult:
    """A test problem shared by one or more models, with its classical runs.

    Attributes:
        problem_id: short label used in tables and plots (``P1``, ``P2``, ...).
        spec: :meth:`unrolled.problems.Problem.spec` of the problem.
        n_test: number of test samples.
        signal_range: peak-to-peak range of ``problem.signal`` for PSNR, None when PSNR is not reported.
        regs: the chosen ``reg`` of each solver.
        runs: the traced test-set runs of each solver.
        iteration_metrics: FISTA after selected iteration counts, with PSNR (image problems only).
    """

    problem_id: str
    spec: dict[str, Any]
    n_test: int
    signal_range: float | None
    regs: list[RegChoice]
    runs: list[ClassicalRun]
    iteration_metrics: list[IterationMetrics] = field(default_factory=list)

    def run(self, solver: str) -> ClassicalRun:
        return next(run for run in self.runs if run.solver == solver)

    def reg(self, solver: str) -> RegChoice:
        return next(choice for choice in self.regs if choice.solver == solver)

    def metrics_at(self, solver: str, n_iter: int) -> IterationMetrics | None:
        matches = [point for point in self.iteration_metrics if point.solver == solver and point.n_iter == n_iter]
        return matches[0] if matches else None


@dataclass
class SolverComparison:
    """One classical solver measured against one layer of a model.

    Attributes:
        iterations_to_reach: first iteration count whose aggregate test NMSE is at most the layer's,
            or None when ``max_iter`` iterations do not reach it.
        time_to_reach_s: the trace's ``time_s`` at that iteration (None when not reached).
        nmse_db_at_k: aggregate NMSE after as many iterations as the layer count k (None when k > max_iter).
        nmse_db_per_sample_at_k: per-sample NMSE after k iterations (None when k > max_iter).
    """

    solver: str
    iterations_to_reach: int | None
    time_to_reach_s: float | None
    nmse_db_at_k: float | None
    nmse_db_per_sample_at_k: float | None


@dataclass
class LayerResult:
    """Test metrics of the first ``n_layers`` layers of a model, and the classical solvers beside them.

    ``forward_s`` is the median wall-clock of ``network(y_test, n_layers=k)`` over the repeats.
    """

    n_layers: int
    nmse_db: float
    nmse_db_per_sample: float
    psnr_db: float | None
    forward_s: float
    classical: list[SolverComparison]

    def solver(self, solver: str) -> SolverComparison:
        return next(comparison for comparison in self.classical if comparison.solver == solver)


@dataclass
class ModelResult:
    """Per-layer test results of a model, where ``layers[k - 1]`` describes the first k layers."""

    name: str
    problem_id: str
    network_class: str
    dtype: str
    layers: list[LayerResult]


@dataclass
class Report:
    """Everything a comparison report shows: machine, settings, problems with their classical runs, models."""

    machine: dict[str, Any]
    settings: dict[str, Any]
    problems: list[ProblemResult]
    models: list[ModelResult]

    def problem(self, problem_id: str) -> ProblemResult:
        return next(problem for problem in self.problems if problem.problem_id == problem_id)


def report_to_dict(report: Report) -> dict[str, Any]:
    """Convert ``report`` to nested dicts and lists that ``json.dumps`` accepts."""
    return dataclasses.asdict(report)


def report_from_dict(data: dict[str, Any]) -> Report:
    """Rebuild a :class:`Report` from :func:`report_to_dict` output, for example a parsed ``report.json``."""
    return _from_dict(Report, data)


def _from_dict(cls: type, data: dict[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    values = {item.name: _convert(hints[item.name], data[item.name]) for item in dataclasses.fields(cls)}
    return cls(**values)


def _convert(annotation: Any, value: Any) -> Any:
    """Convert ``value`` to ``annotation`` where it names a result class, possibly inside a list or an Optional."""
    if value is None:
        return None
    if dataclasses.is_dataclass(annotation):
        return _from_dict(annotation, value)

    origin = typing.get_origin(annotation)
    arguments = typing.get_args(annotation)
    if origin is list:
        return [_convert(arguments[0], item) for item in value]
    if origin in (typing.Union, types.UnionType):
        not_none = [argument for argument in arguments if argument is not type(None)]
        return _convert(not_none[0], value) if len(not_none) == 1 else value
    return value
