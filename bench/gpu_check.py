"""GPU check: train a 16-layer network and run FISTA at scale on a CUDA device and on the CPU, side by side.

A prepared script for a machine with a GPU, run in one go:

1. Training: ALISTA with 16 layers on the 250 × 500 reference problem, ``--steps`` Lightning
   training steps (batch 256, fresh samples, no validation), on the GPU in float32 and with
   bf16 autocast (``precision="bf16-mixed"``), and on the CPU. Reported: steps per second.
2. FISTA on ``--fista-problems`` problems at once for ``--fista-iter`` iterations on the GPU. The
   CPU runs ``--cpu-fista-iter`` iterations of the same batch (10,000 would take minutes), and
   its time per iteration is compared.
3. Peak GPU memory of a training step of ALISTA-32 on the 2,000 × 4,000 problem, batch 64, with
   and without activation checkpointing (:mod:`bench.training_memory`'s step).

The results go to stdout and, as Markdown, to ``--output`` (default ``docs/gpu_check.md``). With
``--device cpu`` only the CPU columns are measured, which is how the test suite exercises the script.
The last line printed is the GPU's speed-up over the CPU for FISTA per iteration.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import pytorch_lightning as pl
import torch

from bench.timing import BenchmarkResult, configure_threads, describe_machine, format_ms
from bench.training_memory import training_step_peak
from models import build_network
from models.data import ProblemDataModule
from models.module import UnrolledModule
from unrolled.files import write_atomic
from unrolled.problems import SparseCoding
from unrolled.solvers import fista

log = logging.getLogger(__name__)

NAME = "gpu_check"
DEFAULT_OUTPUT = Path(__file__).resolve().parents[1] / "docs" / "gpu_check.md"
REG = 0.00215  # FISTA's best reg on the reference problem at SNR 40 dB (bench.unrolled_vs_fista)
DESCRIPTION = (
    "Lightning training steps per second of ALISTA-16 (batch 256, fresh samples, no validation, the first step "
    "excluded) in float32 on the CPU and the GPU, and with bf16 autocast on the GPU; FISTA (reg {reg}) on all the "
    "problems at once, per iteration, with {fista_iter} iterations on the GPU and {cpu_fista_iter} on the CPU; peak GPU "
    "memory of one ALISTA-32 training step (batch 64) with and without activation checkpointing."
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python -m bench.{NAME}", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="GPU to check, or cpu for the CPU columns only (default cuda)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads on the CPU (default: all available cores)")
    parser.add_argument("--steps", type=int, default=300, help="training steps per run (default 300)")
    parser.add_argument("--size", type=int, nargs=2, default=[250, 500], metavar=("M", "N"), help="shape of A (default 250 500)")
    parser.add_argument("--fista-problems", type=int, default=10_000, help="problems solved at once by FISTA (default 10000)")
    parser.add_argument("--fista-iter", type=int, default=10_000, help="FISTA iterations on the GPU (default 10000)")
    parser.add_argument("--cpu-fista-iter", type=int, default=200, help="FISTA iterations on the CPU (default 200)")
    parser.add_argument(
        "--memory-size", type=int, nargs=2, default=[2000, 4000], metavar=("M", "N"),
        help="shape of A for the GPU memory check (default 2000 4000)",
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help=f"Markdown file to write (default {DEFAULT_OUTPUT})")
    return parser


def train_steps_per_s(problem: SparseCoding, device: torch.device, steps: int, precision: str = "32-true") -> float:
    """Return the training steps per second of ALISTA-16 over ``steps`` steps, start-up and the first step excluded."""
    module = UnrolledModule("alista", 16, problem.spec())
    data = ProblemDataModule(problem, batch_size=256, steps_per_epoch=steps + 1)
    timer = _StepTimer()
    trainer = pl.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu", devices=1, max_steps=steps + 1, precision=precision,
        limit_val_batches=0, enable_checkpointing=False, logger=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[timer],
    )
    trainer.fit(module, datamodule=data)
    return steps / (timer.end - timer.start)


class _StepTimer(pl.Callback):
    """Clock from the end of the first training step (warm-up) to the end of the last."""

    def __init__(self) -> None:
        self.start = self.end = 0.0

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if module.device.type == "cuda":
            torch.cuda.synchronize(module.device)
        now = time.perf_counter()
        if trainer.global_step == 1:
            self.start = now
        self.end = now


def fista_s_per_iter(A: torch.Tensor, y: torch.Tensor, max_iter: int) -> float:
    """Return the wall-clock per iteration of one FISTA call of ``max_iter`` iterations, after a short warm-up call."""
    fista(A, y, REG, max_iter=2)
    if A.device.type == "cuda":
        torch.cuda.synchronize(A.device)
    start = time.perf_counter()
    fista(A, y, REG, max_iter=max_iter)
    if A.device.type == "cuda":
        torch.cuda.synchronize(A.device)
    return (time.perf_counter() - start) / max_iter


def run(args: argparse.Namespace) -> BenchmarkResult:
    """Measure training and FISTA on the CPU and, unless ``--device cpu``, on the GPU; return the table."""
    device = torch.device(args.device)
    if device.type not in ("cuda", "cpu"):
        raise ValueError(f"--device must be a CUDA device or cpu, got {args.device!r}.")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"--device {args.device} needs a CUDA device, and torch sees none; pass --device cpu for the CPU columns only.")
    if min(args.steps, args.fista_problems, args.fista_iter, args.cpu_fista_iter, *args.size) < 1:
        raise ValueError("steps, sizes, problem counts and iteration counts must be positive.")
    m, n = args.size
    problem = SparseCoding(m=m, n=n, snr_db=40.0, n_test=args.fista_problems)
    y = problem.fixed_set("test")[0].to(torch.float32)
    A = problem.A.to(torch.float32)
    cpu = torch.device("cpu")

    result = BenchmarkResult(
        name=NAME,
        title="GPU against CPU: training steps and FISTA",
        description=DESCRIPTION.format(reg=REG, fista_iter=args.fista_iter, cpu_fista_iter=args.cpu_fista_iter),
        settings={
            "m": m, "n": n, "steps": args.steps, "fista_problems": args.fista_problems, "fista_iter": args.fista_iter,
            "cpu_fista_iter": args.cpu_fista_iter, "reg": REG, "device": str(device), "torch_threads": torch.get_num_threads(),
        },
        columns=["measurement", "CPU", str(device) if device.type == "cuda" else "GPU", "GPU / CPU speed"],
    )
    log.info("%s: training on the CPU", NAME)
    cpu_steps = train_steps_per_s(problem, cpu, args.steps)
    log.info("%s: FISTA on the CPU", NAME)
    cpu_fista = fista_s_per_iter(A, y, args.cpu_fista_iter)
    if device.type != "cuda":
        result.rows.append(["ALISTA-16 training (steps/s)", f"{cpu_steps:.1f}", "not measured", ""])
        result.rows.append([f"FISTA, {args.fista_problems} problems (ms/iter)", format_ms(cpu_fista), "not measured", ""])
        result.ratio_line = f"ratio not measured (no GPU; CPU FISTA {format_ms(cpu_fista)} ms/iter)"
        return result

    log.info("%s: training on %s", NAME, device)
    gpu_steps = train_steps_per_s(problem, device, args.steps)
    gpu_steps_bf16 = train_steps_per_s(problem, device, args.steps, precision="bf16-mixed")
    log.info("%s: FISTA on %s", NAME, device)
    gpu_fista = fista_s_per_iter(A.to(device), y.to(device), args.fista_iter)
    result.rows += [
        ["ALISTA-16 training, float32 (steps/s)", f"{cpu_steps:.1f}", f"{gpu_steps:.1f}", f"{gpu_steps / cpu_steps:.1f}x"],
        ["ALISTA-16 training, bf16-mixed (steps/s)", "", f"{gpu_steps_bf16:.1f}", f"{gpu_steps_bf16 / cpu_steps:.1f}x"],
        [
            f"FISTA, {args.fista_problems} problems (ms/iter)", format_ms(cpu_fista), format_ms(gpu_fista),
            f"{cpu_fista / gpu_fista:.1f}x",
        ],
        [f"FISTA, {args.fista_iter} iterations (s)", f"≈ {cpu_fista * args.fista_iter:.0f}", f"{gpu_fista * args.fista_iter:.1f}", ""],
    ]

    memory_problem = SparseCoding(m=args.memory_size[0], n=args.memory_size[1], snr_db=40.0)
    network = build_network("alista", memory_problem.A.to(device, torch.float32), 32)
    y_mem, x_mem = (t.to(device, torch.float32) for t in memory_problem.sample(64, torch.Generator().manual_seed(0), "train"))
    for checkpoint_every in (None, 4):
        network.checkpoint_every = checkpoint_every
        peak = training_step_peak(network, y_mem, x_mem, device)
        label = "off" if checkpoint_every is None else f"every {checkpoint_every}"
        result.rows.append([f"ALISTA-32 step peak memory, {args.memory_size[0]}x{args.memory_size[1]}, checkpointing {label} (MiB)", "", f"{peak / 2**20:.0f}", ""])
    result.ratio_line = f"ratio {cpu_fista / gpu_fista:.1f} (FISTA time per iteration CPU / {device}, {args.fista_problems} problems {m}x{n})"
    return result


def render(result: BenchmarkResult, machine: dict) -> str:
    """Return the Markdown of the check: machine, settings, table and result line."""
    lines = [
        f"# {result.title}", "", f"Written by `python -m bench.{NAME}`; rerun it instead of editing this page.", "",
        f"- CPU: {machine['cpu']}, {machine['cores']} cores, torch threads {machine['torch_threads']}, torch {machine['torch']}",
        f"- GPU: {machine['gpu'] or 'none'}", "", result.description, "",
        "Settings: " + ", ".join(f"`{key}={value}`" for key, value in result.settings.items()) + ".", "",
        "| " + " | ".join(result.columns) + " |", "|" + "---|" * len(result.columns),
        *("| " + " | ".join(row) + " |" for row in result.rows), "", f"Result line: `{result.ratio_line}`",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    configure_threads(args.threads)
    try:
        result = run(args)
    except (RuntimeError, ValueError) as error:
        parser.error(str(error))
    write_atomic(args.output, render(result, describe_machine(args.device)).encode())
    result.print_text()


if __name__ == "__main__":
    main()
