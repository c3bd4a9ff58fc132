"""Peak memory of a training step against depth and batch size, with and without activation checkpointing.

The step is that of ALISTA on a large sparse-coding problem, 2,000 × 4,000 by default (64 times
the entries of the 250 × 500 reference). It is a forward pass with the loss on the last layer only
(as ``loss=mse_last`` trains), the mean squared error and a backward pass. ALISTA's weight W is analytic and
fixed, so the step stores no weight gradient of the size of A, and what grows with depth and batch
is the activations. Each configuration is measured once with :class:`unrolled.memory.PeakMemory`:
on the CPU the rise of the process's peak resident set above its level before the step, on a
GPU the rise of ``torch.cuda.max_memory_allocated``. Each network makes one unmeasured step first.
Memory is deterministic enough that one measurement per configuration suffices, so ``--repeats``
applies to the step times only.

Expected: without checkpointing the step stores a few tensors of batch × n per layer, so the
peak grows in proportion to depth × batch, and the last column (peak per layer and sample) stays
flat. With ``checkpoint_every = c`` it stores one state per segment of c layers plus the
activations of one segment, so depth adds only a state per c layers.

The time of one step with and without checkpointing, at the largest depth and batch, is measured
side by side: the recomputation costs about one more forward pass.

Run alone with ``python -m bench.training_memory`` (``--help`` lists the options). The last line
printed is the ratio of the peaks with and without checkpointing at the largest depth and batch.
"""

from __future__ import annotations

import argparse
import logging

import torch

from bench.timing import BenchmarkResult, check_repeats, format_ms, run_standalone, time_side_by_side
from models import build_network
from unrolled.memory import PeakMemory
from unrolled.problems import SparseCoding

log = logging.getLogger(__name__)

NAME = "training_memory"
NETWORK = "alista"
DEFAULT_SIZE = (2000, 4000)
DEFAULT_DEPTHS = (8, 16, 32)
DEFAULT_BATCHES = (16, 32, 64)
DEFAULT_CHECKPOINT_EVERY = 4
MIB = 2**20


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of this benchmark (the common ones come from :func:`bench.timing.add_common_arguments`)."""
    parser.add_argument(
        "--memory-size", type=int, nargs=2, default=list(DEFAULT_SIZE), metavar=("M", "N"),
        help=f"shape of A (default {DEFAULT_SIZE[0]} {DEFAULT_SIZE[1]})",
    )
    parser.add_argument("--depths", type=int, nargs="+", default=list(DEFAULT_DEPTHS), help=f"numbers of layers (default {DEFAULT_DEPTHS})")
    parser.add_argument(
        "--memory-batches", type=int, nargs="+", default=list(DEFAULT_BATCHES),
        help=f"training batch sizes (default {DEFAULT_BATCHES})",
    )
    parser.add_argument(
        "--checkpoint-every", type=int, default=DEFAULT_CHECKPOINT_EVERY,
        help=f"layers per checkpointed segment (default {DEFAULT_CHECKPOINT_EVERY})",
    )


def _training_step(network: torch.nn.Module, y: torch.Tensor, x: torch.Tensor) -> None:
    network.zero_grad(set_to_none=True)
    loss = (network(y, all_layers=False)[-1] - x).square().mean()
    loss.backward()


def training_step_peak(network: torch.nn.Module, y: torch.Tensor, x: torch.Tensor, device: torch.device) -> int:
    """Return the peak memory in bytes of one training step (loss on the last layer) above its start."""
    with PeakMemory(device) as meter:
        _training_step(network, y, x)
    return meter.peak_bytes


def run(args: argparse.Namespace) -> BenchmarkResult:
    """Measure the peak of one training step for every depth, batch and checkpointing setting, and time the largest."""
    check_repeats(args.repeats)
    m, n = args.memory_size
    if min(m, n, args.checkpoint_every, *args.depths, *args.memory_batches) < 1:
        raise ValueError(
            f"sizes, depths, batches and checkpoint_every must be positive, got size={args.memory_size}, "
            f"depths={args.depths}, batches={args.memory_batches}, checkpoint_every={args.checkpoint_every}."
        )
    device = torch.device(args.device)
    problem = SparseCoding(m=m, n=n, snr_db=40.0)
    A = problem.A.to(device, torch.float32)
    largest_batch = max(args.memory_batches)
    y_all, x_all = problem.sample(largest_batch, torch.Generator().manual_seed(0), "train")
    y_all, x_all = y_all.to(device, torch.float32), x_all.to(device, torch.float32)

    result = BenchmarkResult(
        name=NAME,
        title="Peak memory of a training step against depth and batch size",
        description=__doc__.split("\n\n", 1)[1].rsplit("\n\nRun alone", 1)[0].replace("\n", " "),
        settings={
            "network": NETWORK, "m": m, "n": n, "depths": args.depths, "batches": args.memory_batches,
            "checkpoint_every": args.checkpoint_every, "repeats": args.repeats, "device": str(device),
            "torch_threads": torch.get_num_threads(),
        },
        columns=["layers", "batch", "checkpointing", "peak (MiB)", "peak / (layers x batch) (KiB)", "state batch x n (KiB)"],
    )
    peaks = {}
    networks = {}
    for depth in sorted(args.depths):
        network = build_network(NETWORK, A, depth)
        networks[depth] = network
        # The first step of a network allocates what later steps reuse (thread pools, autograd's buffers).
        _training_step(network, y_all[: min(args.memory_batches)], x_all[: min(args.memory_batches)])
        for batch in sorted(args.memory_batches):
            y, x = y_all[:batch], x_all[:batch]
            for checkpoint_every in (None, args.checkpoint_every):
                network.checkpoint_every = checkpoint_every
                peak = training_step_peak(network, y, x, device)
                peaks[depth, batch, checkpoint_every] = peak
                log.info("%s layers %d batch %d checkpoint_every %s: %.1f MiB", NAME, depth, batch, checkpoint_every, peak / MIB)
                result.rows.append([
                    str(depth), str(batch), "off" if checkpoint_every is None else f"every {checkpoint_every}",
                    f"{peak / MIB:.1f}", f"{peak / (depth * batch) / 1024:.1f}", f"{batch * n * 4 / 1024:.0f}",
                ])

    deepest = max(args.depths)
    network = networks[deepest]
    y, x = y_all, x_all

    def step_with(checkpoint_every: int | None):
        def step() -> None:
            network.checkpoint_every = checkpoint_every
            _training_step(network, y, x)
        return step

    times = time_side_by_side(
        {"plain": step_with(None), "checkpointed": step_with(args.checkpoint_every)}, args.repeats, device, label=NAME
    )
    ratio = peaks[deepest, largest_batch, args.checkpoint_every] / peaks[deepest, largest_batch, None]
    result.notes.append(
        f"Step time at {deepest} layers, batch {largest_batch}: {format_ms(times['plain'])} ms without checkpointing, "
        f"{format_ms(times['checkpointed'])} ms with checkpoint_every={args.checkpoint_every} "
        f"(ratio {times['checkpointed'] / times['plain']:.2f}, median of {args.repeats} interleaved rounds)."
    )
    result.ratio_line = (
        f"ratio {ratio:.3f} (peak memory of a training step with checkpoint_every={args.checkpoint_every} / without, "
        f"{NETWORK} {deepest} layers, batch {largest_batch}, {m}x{n}, {device})"
    )
    return result


if __name__ == "__main__":
    run_standalone(f"python -m bench.{NAME}", __doc__.split("\n\n")[0], add_arguments, run, None)
