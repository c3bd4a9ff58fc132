"""Study ``network``: ALISTA's per-layer parameters learned with full, truncated and checkpointed hypergradients, beside the bilevel Lasso weight."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import torch
from matplotlib.figure import Figure

from unrolled.bilevel.full_batch import implicit_gradient_descent
from unrolled.bilevel.hypergradient import ApproximateHypergradientWarning
from unrolled.memory import SavedTensorMemory
from unrolled.bilevel.network import SparseCodingLasso, fit_network, network_hypergradient
from unrolled.bilevel.study.common import timed
from unrolled.layers.alista import ALISTA
from unrolled.metrics import nmse_db
from unrolled.problems.base import seeded_generator
from unrolled.problems.sparse_coding import SparseCoding
from unrolled.solvers.ista import fista

log = logging.getLogger(__name__)

TITLE = "An unrolled network's parameters as hyperparameters"


@dataclass(frozen=True)
class NetworkResult:
    traces: dict[str, list[tuple[int, float, float]]]
    peak_mb: dict[str, float]
    lasso_weight: float
    lasso_seconds: float
    fista_nmse_db: dict[int, float]
    n_layers: int
    n_steps: int
    batch_size: int
    lasso_samples: int


NETWORK_MODES = {"end to end (full reverse mode)": {}, "truncated, last 4 layers": {"truncate": 4}, "checkpoint every 4 layers": {"checkpoint_every": 4}}


def run(quick: bool) -> NetworkResult:
    problem = SparseCoding(snr_db=40)
    A = problem.A.to(torch.float32)
    n_layers, batch_size = 16, 64
    n_steps = 10 if quick else 300
    traces, peaks = {}, {}
    y_probe, x_probe = (t.to(torch.float32) for t in problem.sample(batch_size, seeded_generator(11)))
    for mode, options in NETWORK_MODES.items():
        torch.manual_seed(0)
        network = ALISTA(A, n_layers)
        trace = fit_network(network, problem, n_steps=n_steps, batch_size=batch_size, lr=5e-3, eval_every=max(1, n_steps // 12), **options)
        traces[mode] = list(zip(trace.step, trace.time, trace.test_nmse_db))
        with SavedTensorMemory() as meter:
            network_hypergradient(network, y_probe, x_probe, **options)
        peaks[mode] = meter.peak_bytes / 2**20
        log.info("network %s: %.2f dB after %d steps, %.1f s", mode, trace.test_nmse_db[-1], n_steps, trace.time[-1])

    lasso_samples = 16 if quick else 64
    y, x = problem.sample(lasso_samples, seeded_generator(7))
    lasso = SparseCodingLasso(problem.A, y, x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ApproximateHypergradientWarning)
        result, seconds = timed(lambda: implicit_gradient_descent(lasso, n_iter=3 if quick else 15, outer_step=float(lasso.initial_hyper()[0]), eval_every=100))
    weight = float(result.hyper[0])
    y_test, x_test = problem.sample(100 if quick else problem.n_test, seeded_generator(problem.seeds["test"]))
    fista_db = {K: float(nmse_db(fista(problem.A, y_test, weight, max_iter=K).x, x_test)) for K in ((16, 100) if quick else (16, 100, 1000, 3000))}
    return NetworkResult(traces, peaks, weight, seconds, fista_db, n_layers, n_steps, batch_size, lasso_samples)


def plot_network(result: NetworkResult) -> Figure:
    figure = Figure(figsize=(6, 3.6), layout="constrained")
    axes = figure.subplots()
    for mode, rows in result.traces.items():
        axes.plot([row[0] for row in rows], [row[2] for row in rows], "o-", markersize=3, label=f"ALISTA-16, {mode}")
    axes.axhline(result.fista_nmse_db[16], color="tab:gray", linestyle="--", label="FISTA, 16 iterations, bilevel λ")
    longest = max(result.fista_nmse_db)
    axes.axhline(result.fista_nmse_db[longest], color="black", linestyle=":", label=f"FISTA, {longest:,} iterations, bilevel λ")
    axes.set_xlabel("Adam steps (64 fresh samples each)")
    axes.set_ylabel("test NMSE (dB)")
    axes.legend(fontsize="small")
    axes.set_title("Sparse coding 250 × 500, SNR 40 dB", fontsize="medium")
    return figure


def section(result: NetworkResult, header: str) -> str:
    lines = [
        header,
        "",
        f"ALISTA with {result.n_layers} layers (32 parameters: a step and a threshold per layer), float32, Adam at 5e-3 "
        f"for {result.n_steps} steps of {result.batch_size} fresh samples; the outer loss is Σ‖x_K − x‖²/Σ‖x‖². Test NMSE "
        "(aggregate, dB) on the problem's test samples; peak saved-tensor memory of one hypergradient on 64 samples.",
        "",
        "| hypergradient | test NMSE (dB) | training time (s) | peak memory (MiB) |",
        "|---|---:|---:|---:|",
    ]
    for mode, rows in result.traces.items():
        lines.append(f"| {mode} | {rows[-1][2]:.2f} | {rows[-1][1]:.1f} | {result.peak_mb[mode]:.2f} |")
    lines += [
        "",
        f"The Lasso weight that minimises the same loss on {result.lasso_samples} training samples, by implicit-gradient descent on the support: "
        f"λ = {result.lasso_weight:.4g} ({result.lasso_seconds:.0f} s). FISTA with that λ on the test samples:",
        "",
        "| FISTA iterations | " + " | ".join(str(K) for K in result.fista_nmse_db) + " |",
        "|---|" + "---:|" * len(result.fista_nmse_db),
        "| test NMSE (dB) | " + " | ".join(f"{value:.2f}" for value in result.fista_nmse_db.values()) + " |",
        "",
        "![ALISTA's parameters as hyperparameters](figures/bilevel_network.png)",
    ]
    return "\n".join(lines)


def figures(result: NetworkResult) -> dict[str, Figure]:
    """Return the study's figures by their path under the output folder."""
    return {"figures/bilevel_network.png": plot_network(result)}
