r"""Stages against iterations on image reconstruction: unrolled networks beside classical solvers.

For one :class:`~unrolled.problems.imaging_tasks.ImagingTask` the report runs each classical method
of the task (TV-ADMM and wavelet-FISTA for natural images, zero filling, TV-ADMM and wavelet-ADMM
for MRI) for ``max_iter`` iterations on the test images and records the mean PSNR over the images
after every iteration. Each method's ``reg`` is the best of a grid by the mean validation PSNR after
``max_iter`` iterations, so the test images never choose it. Each network's PSNR is measured after
every stage. The report then states, for each stage count, the first iteration at which each
classical method's mean PSNR reaches the network's, and times the network's forward pass and each
method's ``max_iter`` iterations on the same test images, batched, on one machine.

PSNR and SSIM are those of :mod:`unrolled.image_metrics` (estimates clipped to [0, 1]; the modulus
of complex MR images). Per-iteration curves use the same PSNR on each image's own trace.
"""

from __future__ import annotations

import functools
import io
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor, nn

from unrolled.files import write_atomic
from unrolled.image_metrics import psnr, ssim
from unrolled.prox import prox_l1
from unrolled.problems.imaging_tasks import ImagingBatch, ImagingTask, psnr_crop
from unrolled.solvers.admm_imaging import admm_tv, admm_wavelet
from unrolled.solvers.proximal_gradient import proximal_gradient
from unrolled.transforms import Wavelet2D

# CG steps per ADMM x-update where no exact solve exists (block CS, inpainting). Warm-started from
# the previous x, a few steps keep ADMM's fixed point; 50 would make 1,000 iterations take an hour
# on 8 images of 264 x 264 on one CPU thread.
CG_STEPS = 5
WAVELET = "db4"
WAVELET_LEVELS = 3
ADMM_RHO = 1.0


@dataclass(frozen=True)
class ClassicalMethod:
    """A classical solver of a task, run as ``solve(batch, reg, max_iter, callback)``.

    ``callback(k, x)``, when given, receives the iterate after every iteration k. ``reg_grid`` lists
    the candidate regularisation weights; ``iterative`` is False for one-shot baselines (zero filling).
    """

    name: str
    solve: Callable[..., Tensor]
    reg_grid: tuple[float, ...]
    iterative: bool = True


def _tv_admm(batch: ImagingBatch, reg: float, max_iter: int, callback=None, data_term: str = "l2") -> Tensor:
    result = admm_tv(
        batch.operator,
        batch.y,
        reg,
        ADMM_RHO,
        data_term=data_term,
        cg_max_iter=CG_STEPS,
        max_iter=max_iter,
        abs_tol=0.0,
        rel_tol=0.0,
        callback=callback,
    )
    return result.x


def wavelet_levels(shape: tuple[int, ...]) -> int:
    """Return :data:`WAVELET_LEVELS`, or fewer where H or W is not divisible by 2**levels (66 × 66 block-CS patches: 1)."""
    levels = WAVELET_LEVELS
    while levels > 1 and (shape[-2] % 2**levels or shape[-1] % 2**levels):
        levels -= 1
    return levels


def _wavelet_admm(batch: ImagingBatch, reg: float, max_iter: int, callback=None) -> Tensor:
    result = admm_wavelet(
        batch.operator,
        batch.y,
        reg,
        ADMM_RHO,
        wavelet=WAVELET,
        levels=wavelet_levels(batch.operator.in_shape),
        max_iter=max_iter,
        abs_tol=0.0,
        rel_tol=0.0,
        callback=callback,
    )
    return result.x


def _wavelet_fista(batch: ImagingBatch, reg: float, max_iter: int, callback=None) -> Tensor:
    transform = Wavelet2D(WAVELET, wavelet_levels(batch.operator.in_shape))
    result = proximal_gradient(
        batch.operator, batch.y, prox_l1, reg, transform=transform, max_iter=max_iter, restart="gradient", callback=callback
    )
    return result.x


def _zero_filled(batch: ImagingBatch, reg: float, max_iter: int, callback=None) -> Tensor:
    return batch.operator.adjoint(batch.y)


def classical_methods(task: ImagingTask) -> dict[str, ClassicalMethod]:
    """Return the classical methods that the report runs for ``task``, by name, with their reg grids.

    The grids bracket the reg that was best on validation images in the runs of docs/imaging.md. A
    selected reg at either end of its grid is flagged in the report.
    """
    if task.name == "mri":
        return {
            "zero_filled": ClassicalMethod("zero_filled", _zero_filled, (0.0,), iterative=False),
            "tv_admm": ClassicalMethod("tv_admm", _tv_admm, (0.0003, 0.001, 0.003, 0.01)),
            "wavelet_admm": ClassicalMethod("wavelet_admm", _wavelet_admm, (0.0003, 0.001, 0.003, 0.01)),
        }
    if task.name == "block_cs":
        return {
            "tv_admm": ClassicalMethod("tv_admm", _tv_admm, (0.0001, 0.0003, 0.001, 0.003)),
            "wavelet_fista": ClassicalMethod("wavelet_fista", _wavelet_fista, (0.0001, 0.0003, 0.001, 0.003)),
        }
    methods = {
        "tv_admm": ClassicalMethod("tv_admm", _tv_admm, (0.01, 0.03, 0.1, 0.3)),
        "wavelet_fista": ClassicalMethod("wavelet_fista", _wavelet_fista, (0.01, 0.03, 0.1, 0.3)),
    }
    if getattr(task, "outlier_fraction", 0.0) > 0:
        methods["tv_admm_l1"] = ClassicalMethod("tv_admm_l1", functools.partial(_tv_admm, data_term="l1"), (0.1, 0.3, 1.0, 3.0))
    return methods


def mean_psnr(batch: ImagingBatch, estimate: Tensor) -> float:
    """Return the mean PSNR in dB over the images of ``batch``."""
    scored, target = psnr_crop(batch, estimate)
    return float(psnr(scored.double(), target.double()).mean())


def mean_ssim(batch: ImagingBatch, estimate: Tensor) -> float:
    """Return the mean SSIM over the images of ``batch``."""
    scored, target = psnr_crop(batch, estimate)
    return float(ssim(scored.double(), target.double()).mean())


def select_reg(method: ClassicalMethod, val: ImagingBatch, max_iter: int) -> tuple[float, dict[str, float]]:
    """Return the reg of ``method.reg_grid`` with the best mean validation PSNR after ``max_iter`` iterations, and every candidate's PSNR."""
    scores = {}
    for reg in method.reg_grid:
        scores[repr(reg)] = mean_psnr(val, method.solve(val, reg, max_iter))
    best = max(method.reg_grid, key=lambda reg: scores[repr(reg)])
    return best, scores


def run_with_curve(method: ClassicalMethod, batch: ImagingBatch, reg: float, checkpoints: list[int]) -> dict[str, Any]:
    """Run ``method`` for ``checkpoints[-1]`` iterations and return the mean PSNR at each checkpoint, the final estimate and the time.

    The PSNR at the checkpoints is measured inside the run by the solver's callback; its own time is
    subtracted, so ``time_s`` is the solver's alone.
    """
    curve: list[float] = []
    measuring = [0.0]
    wanted = set(checkpoints)

    def measure(k: int, x: Tensor) -> None:
        if k in wanted:
            start = time.perf_counter()
            curve.append(mean_psnr(batch, x))
            measuring[0] += time.perf_counter() - start

    start = time.perf_counter()
    final = method.solve(batch, reg, checkpoints[-1], measure if method.iterative else None)
    seconds = time.perf_counter() - start - measuring[0]
    if not method.iterative:
        curve = [mean_psnr(batch, final)] * len(checkpoints)
    return {"psnr_db": curve, "final": final, "time_s": seconds}


def time_call(function: Callable[[], Any], repeats: int) -> float:
    """Return the median wall-clock seconds of ``repeats`` (>= 1) calls of ``function`` after one warm-up call."""
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


@torch.no_grad()
def network_stages(network: nn.Module, batch: ImagingBatch) -> dict[str, list[float]]:
    """Return the mean PSNR and SSIM of ``network`` on ``batch`` after every stage."""
    estimates = network(batch.y, batch.operator, noise_std=batch.noise_std, all_stages=True)
    return {"psnr_db": [mean_psnr(batch, estimate) for estimate in estimates], "ssim": [mean_ssim(batch, estimate) for estimate in estimates]}


def iterations_to_match(checkpoints: list[int], curve: list[float], targets: list[float]) -> list[int | None]:
    """For each target PSNR, the first iteration count of ``checkpoints`` whose PSNR reaches it (None: never within the curve)."""
    matches = []
    for target in targets:
        reached = [k for k, value in zip(checkpoints, curve) if value >= target]
        matches.append(reached[0] if reached else None)
    return matches


def iteration_checkpoints(max_iter: int) -> list[int]:
    """Return roughly log-spaced iteration counts from 1 to ``max_iter`` (1, 2, 5, 10, 20, 50, ...)."""
    counts = []
    decade = 1
    while decade <= max_iter:
        counts.extend(k for k in (decade, 2 * decade, 5 * decade) if k <= max_iter)
        decade *= 10
    if counts[-1] != max_iter:
        counts.append(max_iter)
    return counts


def imaging_report(
    networks: dict[str, nn.Module],
    task: ImagingTask,
    max_iter: int = 1000,
    timing_repeats: int = 3,
    val_size: int = 8,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Compare ``networks`` (name to network, all for ``task``) with the task's classical methods on its test set.

    Returns plain data: the task spec, per network the PSNR/SSIM per stage and the forward time,
    per method the reg selected on the first ``val_size`` validation images with their scores, the test PSNR curve at
    :func:`iteration_checkpoints`, final PSNR/SSIM and the time of ``max_iter`` iterations, and the
    iterations each method needs to match each network's stage counts.
    """
    say = progress or (lambda message: None)
    test = task.fixed_set("test").to(torch.float32)
    val = task.fixed_set("val").to(torch.float32).head(val_size)
    checkpoints = iteration_checkpoints(max_iter)
    report: dict[str, Any] = {"task": task.spec(), "max_iter": max_iter, "checkpoints": checkpoints, "n_test_images": len(test)}

    report["networks"] = {}
    for name, network in networks.items():
        say(f"network {name}")
        stages = network_stages(network, test)
        with torch.no_grad():
            seconds = time_call(lambda: network(test.y, test.operator, noise_std=test.noise_std), timing_repeats)
        report["networks"][name] = {**stages, "n_layers": len(stages["psnr_db"]), "time_s": seconds}

    report["classical"] = {}
    for name, method in classical_methods(task).items():
        say(f"classical {name}: reg selection")
        reg, scores = select_reg(method, val, max_iter) if len(method.reg_grid) > 1 else (method.reg_grid[0], {})
        say(f"classical {name}: test run with reg {reg:g}")
        run = run_with_curve(method, test, reg, checkpoints)
        report["classical"][name] = {
            "reg": reg,
            "reg_at_grid_edge": len(method.reg_grid) > 1 and reg in (min(method.reg_grid), max(method.reg_grid)),
            "val_psnr_db": scores,
            "psnr_db": run["psnr_db"],
            "best_psnr_db": max(run["psnr_db"]),
            "final_psnr_db": mean_psnr(test, run["final"]),
            "final_ssim": mean_ssim(test, run["final"]),
            "time_s": run["time_s"] if method.iterative else 0.0,
            "iterative": method.iterative,
        }

    for name, network in report["networks"].items():
        network["iterations_to_match"] = {
            method: iterations_to_match(checkpoints, values["psnr_db"], network["psnr_db"])
            for method, values in report["classical"].items()
            if values["iterative"]
        }
    return report


def render_markdown(report: dict[str, Any]) -> str:
    """Return the report as Markdown: one table per network (stages) and one of the classical methods."""
    lines = [f"# Stages against iterations: task `{report['task']['name']}`", ""]
    lines.append(f"Task: `{report['task']}`; {report['n_test_images']} test images; classical methods run {report['max_iter']} iterations.")
    lines += ["", "## Classical methods", "", "| method | reg | PSNR after max_iter (dB) | best PSNR within max_iter (dB) | SSIM | time (s) |", "|---|---:|---:|---:|---:|---:|"]
    for name, values in report["classical"].items():
        edge = " (grid edge)" if values.get("reg_at_grid_edge") else ""
        lines.append(
            f"| {name} | {values['reg']:g}{edge} | {values['final_psnr_db']:.2f} | {values['best_psnr_db']:.2f} | "
            f"{values['final_ssim']:.4f} | {values['time_s']:.1f} |"
        )
    for name, network in report["networks"].items():
        methods = list(network["iterations_to_match"])
        lines += ["", f"## {name}", "", f"Forward pass on the test images: {network['time_s']:.2f} s.", ""]
        lines.append("| stages | PSNR (dB) | SSIM | " + " | ".join(f"{method}: iterations to match" for method in methods) + " |")
        lines.append("|---:|---:|---:|" + "---:|" * len(methods))
        for k, (value, similarity) in enumerate(zip(network["psnr_db"], network["ssim"]), start=1):
            matches = [network["iterations_to_match"][method][k - 1] for method in methods]
            cells = [str(match) if match is not None else f"> {report['max_iter']}" for match in matches]
            lines.append(f"| {k} | {value:.2f} | {similarity:.4f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def render_png(report: dict[str, Any]) -> bytes:
    """Draw mean test PSNR against stages (networks) and iterations (classical methods), log-scale x."""
    figure = Figure(figsize=(6.4, 4.8), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for name, values in report["classical"].items():
        if values["iterative"]:
            axes.plot(report["checkpoints"], values["psnr_db"], linestyle="--", label=f"{name} (iterations)")
        else:
            axes.axhline(values["psnr_db"][0], color="gray", linestyle=":", label=name)
    for name, network in report["networks"].items():
        stages = list(range(1, len(network["psnr_db"]) + 1))
        axes.plot(stages, network["psnr_db"], marker="o", label=f"{name} (stages)")
    axes.set_xscale("log")
    axes.set_xlabel("stages / iterations")
    axes.set_ylabel("mean test PSNR (dB)")
    axes.set_title(f"task {report['task']['name']}")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize="small")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    return buffer.getvalue()


__all__ = [
    "ClassicalMethod",
    "classical_methods",
    "imaging_report",
    "iteration_checkpoints",
    "iterations_to_match",
    "mean_psnr",
    "render_markdown",
    "render_png",
    "select_reg",
    "write_imaging_report",
]


def write_imaging_report(report: dict[str, Any], output_dir: str | Path) -> dict[str, Path]:
    """Write ``report.json``, ``report.png`` and ``report.md`` of an imaging report atomically; return their paths by format."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": output_dir / "report.json", "png": output_dir / "report.png", "markdown": output_dir / "report.md"}
    write_atomic(paths["json"], (json.dumps(report, indent=1) + "\n").encode())
    write_atomic(paths["png"], render_png(report))
    write_atomic(paths["markdown"], (render_markdown(report) + "\n![PSNR against stages and iterations](report.png)\n").encode())
    return paths
