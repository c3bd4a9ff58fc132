"""Compute a comparison report: every layer of each model against ISTA and FISTA on the model's test set.

Models whose problems have the same :meth:`~unrolled.problems.Problem.spec` share one problem
entry, one choice of ``reg`` per solver and one classical run per solver.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from unrolled.layers import UnrolledISTA
from unrolled.machine import describe_machine
from unrolled.problems import Problem
from unrolled.report.classical import choose_reg, iterations_to_reach, measure_at_iterations, run_traced
from unrolled.report.evaluate import evaluate_layers, signal_range_of, time_forward
from unrolled.report.results import (
    SOLVERS,
    ClassicalRun,
    LayerResult,
    ModelResult,
    ProblemResult,
    RegChoice,
    Report,
    SolverComparison,
)

log = logging.getLogger(__name__)

DEFAULT_REG_GRID = tuple(float(value) for value in np.logspace(-4, -1, 10))


@dataclass
class ReportConfig:
    """Settings of a report.

    Attributes:
        max_iter: iterations of each classical run, for the choice of ``reg`` and on the test set.
        reg_grid: candidate values of ``reg``. Each solver gets the one with the best aggregate
            validation NMSE after ``max_iter`` iterations.
        val_size: number of validation samples (the first ones of ``problem.fixed_set("val")``) the
            grid is scored on.
        ista_reg, fista_reg: a fixed ``reg`` for that solver, which skips its grid search (None: search the grid).
        timing_repeats: timed calls per layer count; the report gives their median.
        image_iters: FISTA iteration counts shown beside the models on image problems, in addition
            to each model's layer counts.
        device: torch device of the networks and the solvers. NOTE: only CPU runs have been tested.
            The CUDA branches (device moves, synchronisation before each clock reading) have not run on a GPU.
        progress: show progress bars for the classical runs.
    """

    max_iter: int = 10_000
    reg_grid: tuple[float, ...] = DEFAULT_REG_GRID
    val_size: int = 256
    ista_reg: float | None = None
    fista_reg: float | None = None
    timing_repeats: int = 5
    image_iters: tuple[int, ...] = (1000,)
    device: str = "cpu"
    progress: bool = True

    def __post_init__(self) -> None:
        if self.max_iter < 1:
            raise ValueError(f"max_iter must be >= 1, got {self.max_iter}.")
        if self.val_size < 1:
            raise ValueError(f"val_size must be >= 1, got {self.val_size}.")
        if self.timing_repeats < 1:
            raise ValueError(f"timing_repeats must be >= 1, got {self.timing_repeats}.")
        if any(not value >= 0 for value in self.reg_grid):
            raise ValueError(f"reg_grid values must be >= 0, got {list(self.reg_grid)}.")
        if any(count < 1 for count in self.image_iters):
            raise ValueError(f"image_iters must be positive iteration counts, got {list(self.image_iters)}.")
        self.reg_grid = tuple(float(value) for value in self.reg_grid)
        self.image_iters = tuple(int(count) for count in self.image_iters)


class ModelEntry(Protocol):
    """Interface of a model as the report reads it. ``models.hub.load_run`` and ``load_pretrained`` return such objects."""

    name: str
    network: UnrolledISTA
    problem: Problem


@dataclass
class NamedModel:
    """A network with its name and problem, for callers that build networks directly."""

    name: str
    network: UnrolledISTA
    problem: Problem


@dataclass
class _ProblemGroup:
    problem_id: str
    problem: Problem
    layer_counts: set[int] = field(default_factory=set)


def compute_report(models: Sequence[ModelEntry], config: ReportConfig | None = None) -> Report:
    """Evaluate every layer of each model and run the classical solvers once per distinct problem.

    Networks are moved to ``config.device`` in place and run in their own dtype under
    ``torch.inference_mode``. Models keep their input order, and a repeated name gets a ``#2``,
    ``#3`` suffix.
    """
    config = config or ReportConfig()
    if len(models) == 0:
        raise ValueError("no models to compare; pass at least one model.")
    device = torch.device(config.device)
    machine = describe_machine(device)
    log.info("machine: %s", machine)

    groups, group_of_model = _group_by_problem(models)
    problems = [_compute_problem(group, config, device) for group in groups]
    names = _unique_names([model.name for model in models])
    results = [
        _compute_model(name, model.network, group_of_model[index], problems, config, device)
        for index, (name, model) in enumerate(zip(names, models))
    ]
    return Report(machine=machine, settings=_settings(config), problems=problems, models=results)


def check_one_problem(models: Sequence[ModelEntry]) -> None:
    """Raise ``ValueError`` naming every model and its problem unless all ``models`` have the same problem spec.

    The message gives, per problem, the models on it and the spec entries that tell the problems apart.
    """
    groups, group_of_model = _group_by_problem(models)
    if len(groups) <= 1:
        return

    specs = [group.problem.spec() for group in groups]
    all_keys = {key for spec in specs for key in spec}
    differing = sorted(
        key for key in all_keys if len({json.dumps(spec.get(key), sort_keys=True, default=str) for spec in specs}) > 1
    )
    descriptions = []
    for group, spec in zip(groups, specs):
        names = [model.name for model, model_group in zip(models, group_of_model) if model_group is group]
        values = ", ".join(f"{key}={spec.get(key)!r}" for key in differing)
        descriptions.append(f"{', '.join(names)} on {spec.get('name')!r} ({values})")
    raise ValueError(
        f"the models are on {len(groups)} different problems: {'; '.join(descriptions)}. "
        "One report compares models of one problem; compare the models of each problem in a separate report."
    )


def _group_by_problem(models: Sequence[ModelEntry]) -> tuple[list[_ProblemGroup], list[_ProblemGroup]]:
    groups: dict[str, _ProblemGroup] = {}
    group_of_model = []
    for model in models:
        key = json.dumps(model.problem.spec(), sort_keys=True, default=str)
        if key not in groups:
            groups[key] = _ProblemGroup(f"P{len(groups) + 1}", model.problem)
        groups[key].layer_counts.update(range(1, model.network.n_layers + 1))
        group_of_model.append(groups[key])
    return list(groups.values()), group_of_model


def _unique_names(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    unique = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        unique.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return unique


def _compute_problem(group: _ProblemGroup, config: ReportConfig, device: torch.device) -> ProblemResult:
    problem = group.problem
    log.info("%s: %s", group.problem_id, problem.spec())
    A = problem.A.to(device)
    y_test, x_test = (tensor.to(device) for tensor in problem.fixed_set("test"))
    y_val, x_val = _validation_subset(problem, config.val_size, device)

    regs = [_resolve_reg(solver, A, y_val, x_val, config) for solver in SOLVERS]
    runs = [run_traced(choice.solver, A, y_test, x_test, choice.reg, config.max_iter, config.progress) for choice in regs]

    signal_range = signal_range_of(problem)
    iteration_metrics = []
    if signal_range is not None:
        counts = sorted(group.layer_counts | set(config.image_iters))
        fista_reg = regs[SOLVERS.index("fista")].reg
        iteration_metrics = measure_at_iterations("fista", problem, A, y_test, x_test, fista_reg, counts, signal_range)

    return ProblemResult(group.problem_id, problem.spec(), int(y_test.shape[0]), signal_range, regs, runs, iteration_metrics)


def _validation_subset(problem: Problem, size: int, device: torch.device) -> tuple[Tensor, Tensor]:
    y_val, x_val = problem.fixed_set("val")
    if size > y_val.shape[0]:
        log.info("val_size=%d exceeds the %d validation samples; scoring the grid on all of them.", size, y_val.shape[0])
    return y_val[:size].to(device), x_val[:size].to(device)


def _resolve_reg(solver: str, A: Tensor, y_val: Tensor, x_val: Tensor, config: ReportConfig) -> RegChoice:
    fixed = getattr(config, f"{solver}_reg")
    if fixed is not None:
        log.info("%s: reg = %.4g (fixed, no grid search)", solver.upper(), fixed)
        return RegChoice(solver, float(fixed), True)
    return choose_reg(solver, A, y_val, x_val, config.reg_grid, config.max_iter, config.progress)


def _compute_model(
    name: str,
    network: UnrolledISTA,
    group: _ProblemGroup,
    problems: list[ProblemResult],
    config: ReportConfig,
    device: torch.device,
) -> ModelResult:
    problem_result = next(result for result in problems if result.problem_id == group.problem_id)
    network = network.to(device)
    y_test, x_test = group.problem.fixed_set("test")
    metrics = evaluate_layers(network, group.problem, y_test, x_test)
    y_network = y_test.to(device, network.A.dtype)

    layers = []
    for layer in metrics:
        forward_s = time_forward(network, y_network, layer.n_layers, config.timing_repeats)
        classical = [_compare_solver(problem_result.run(solver), layer.nmse_db, layer.n_layers) for solver in SOLVERS]
        layers.append(LayerResult(layer.n_layers, layer.nmse_db, layer.nmse_db_per_sample, layer.psnr_db, forward_s, classical))

    last = layers[-1]
    log.info(
        "%s (%s, %d layers): test NMSE %.2f dB (aggregate), %.2f dB (per-sample mean)",
        name,
        group.problem_id,
        last.n_layers,
        last.nmse_db,
        last.nmse_db_per_sample,
    )
    return ModelResult(name, group.problem_id, type(network).__name__, str(network.A.dtype).removeprefix("torch."), layers)


def _compare_solver(run: ClassicalRun, target_db: float, n_layers: int) -> SolverComparison:
    trace = run.trace
    n_iter = iterations_to_reach(trace.nmse_db, target_db)
    time_s = trace.time_s[n_iter] if n_iter is not None else None
    at_k = n_layers <= run.max_iter
    return SolverComparison(
        solver=run.solver,
        iterations_to_reach=n_iter,
        time_to_reach_s=time_s,
        nmse_db_at_k=trace.nmse_db[n_layers] if at_k else None,
        nmse_db_per_sample_at_k=trace.nmse_db_per_sample[n_layers] if at_k else None,
    )


def _settings(config: ReportConfig) -> dict:
    settings = dataclasses.asdict(config)
    settings["reg_grid"] = list(config.reg_grid)
    settings["image_iters"] = list(config.image_iters)
    return settings
