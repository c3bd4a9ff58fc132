"""The numba backend of SGD, SVRG, SAGA and SARAH against the torch backend: same seed, same iterates.

The kernels of ``unrolled.solvers.numba_kernels`` are a second implementation of the torch update
rule. These tests compare the iterates of both backends after a few epochs, for every method, loss,
storage (dense, and CSR with lazy updates), batch size and sampling. The problems are small, so that
the first run stays short although it compiles the kernels (about 15 s on two loaded cores). Later
runs load the kernels from numba's cache.
"""

from __future__ import annotations

import logging
import sys

import numpy as np
import pytest
import torch

from unrolled.problems.finite_sum import FiniteSum
from unrolled.solvers.numba_kernels import RESCALE_BELOW, _lazy_entry, _proximal_update
from unrolled.solvers.saga import saga
from unrolled.solvers.sarah import sarah
from unrolled.solvers.sgd import sgd
from unrolled.solvers import stochastic
from unrolled.solvers.stochastic import Sampler, batch_smoothness
from unrolled.solvers.svrg import svrg

pytestmark = [
    pytest.mark.usefixtures("single_torch_thread"),
    # torch warns that its sparse CSR support is in beta when the test builds CSR features.
    pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta"),
]

SOLVERS = {"sgd": sgd, "svrg": svrg, "saga": saga, "sarah": sarah}
LOSSES = ("squared", "logistic", "multinomial")
TOLERANCE = 1e-10
N_SAMPLES, N_FEATURES, N_EPOCHS = 40, 12, 3


def _problem(
    loss: str, sparse: bool, *, reg_l2: float = 0.1, reg: float = 0.01, scale: float = 1.0, fit_intercept: bool = True
) -> FiniteSum:
    """Return a seeded problem with 30 % non-zero features, uneven sample weights, an ℓ1 term and by default an intercept."""
    generator = torch.Generator().manual_seed(0)
    mask = torch.rand(N_SAMPLES, N_FEATURES, generator=generator) < 0.3
    X = scale * torch.randn(N_SAMPLES, N_FEATURES, generator=generator, dtype=torch.float64) * mask
    targets = {
        "squared": torch.randn(N_SAMPLES, generator=generator, dtype=torch.float64),
        "logistic": torch.where(torch.rand(N_SAMPLES, generator=generator) < 0.5, -1.0, 1.0).double(),
        "multinomial": torch.randint(3, (N_SAMPLES,), generator=generator).double(),
    }
    sample_weight = torch.rand(N_SAMPLES, generator=generator, dtype=torch.float64) + 0.5
    features = X.to_sparse_csr() if sparse else X
    return FiniteSum(features, targets[loss], loss, reg_l2=reg_l2, reg=reg, sample_weight=sample_weight, fit_intercept=fit_intercept)


def _max_difference(solver, problem: FiniteSum, **options) -> tuple[float, torch.Tensor]:
    """Run ``solver`` on both backends with the same seed and return max |ΔW| and the torch iterate."""
    torch_result = solver(problem, max_epochs=N_EPOCHS, seed=3, backend="torch", **options)
    numba_result = solver(problem, max_epochs=N_EPOCHS, seed=3, backend="numba", **options)
    assert torch_result.backend == "torch"
    assert numba_result.backend == "numba"
    return float((torch_result.W - numba_result.W).abs().max()), torch_result.W


@pytest.mark.parametrize("sampling", ["uniform", "importance"])
@pytest.mark.parametrize("batch_size", [1, 8])
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "csr"])
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("method", sorted(SOLVERS))
def test_numba_matches_torch(method: str, loss: str, sparse: bool, batch_size: int, sampling: str) -> None:
    difference, W = _max_difference(SOLVERS[method], _problem(loss, sparse), batch_size=batch_size, sampling=sampling)
    assert difference < TOLERANCE
    # A run that stayed at W = 0 would compare nothing.
    assert float(W.abs().max()) > 1e-3


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "csr"])
@pytest.mark.parametrize(
    "method, options",
    [
        ("svrg", {"loopless": True}),
        ("svrg", {"loopless": True, "snapshot_probability": 0.5, "batch_size": 4}),
        ("sgd", {"schedule": "inverse"}),
        ("sgd", {"schedule": "inverse_sqrt", "batch_size": 8, "sampling": "importance"}),
    ],
    ids=["l-svrg", "l-svrg-p0.5", "sgd-inverse", "sgd-inverse-sqrt"],
)
def test_numba_matches_torch_variants(method: str, options: dict, sparse: bool) -> None:
    difference, _ = _max_difference(SOLVERS[method], _problem("logistic", sparse), **options)
    assert difference < TOLERANCE


@pytest.mark.parametrize("step_factor", [0.999, 1.5], ids=["rescaled-prefix", "replayed-steps"])
@pytest.mark.parametrize("method", sorted(SOLVERS))
def test_lazy_updates_strong_l2(method: str, step_factor: float) -> None:
    """Tiny features make step_size · reg_l2 close to 1 (the prefix products restart) or above 1 (missed steps replayed)."""
    # Without an intercept, whose feature of 1 would dominate the smoothness.
    problem = _problem("squared", sparse=True, reg_l2=1.0, reg=1e-4, scale=1e-2, fit_intercept=False)
    step_size = step_factor / batch_smoothness(problem, Sampler(problem, 1, "uniform", seed=0))
    decay = 1.0 - step_size * problem.reg_l2
    if step_factor < 1:
        # One epoch's product of the factors a_t must fall below the restart threshold.
        assert 0 < decay**N_SAMPLES < RESCALE_BELOW
    else:
        assert decay < 0
    difference, W = _max_difference(SOLVERS[method], problem, step_size=step_size)
    assert difference < 1e-14
    assert float(W.abs().max()) > 0


def test_lazy_entry_matches_stepwise() -> None:
    """The closed form of the missed steps equals their replay, including entries that reach 0 or change sign."""
    rng = np.random.default_rng(0)
    sign_changes = 0
    for _ in range(2000):
        n_steps = int(rng.integers(1, 60))
        step_sizes = rng.uniform(0.01, 0.3, n_steps)
        reg_l2 = float(rng.choice([0.0, 0.5, 2.0]))
        reg = float(rng.choice([0.0, 0.1, 0.5]))
        constant = float(rng.normal() * rng.choice([0.05, 0.5, 2.0]))
        w_start = float(rng.normal() * rng.choice([0.0, 0.1, 1.0, 5.0]))
        scale = np.ones(n_steps + 1)
        weighted = np.zeros(n_steps + 1)
        for t in range(n_steps):
            scale[t + 1] = scale[t] * (1.0 - step_sizes[t] * reg_l2)
            weighted[t + 1] = weighted[t] + step_sizes[t] / scale[t + 1]
        start = int(rng.integers(0, n_steps))
        end = int(rng.integers(start, n_steps + 1))

        w = w_start
        for t in range(start, end):
            w = _proximal_update(w, constant, step_sizes[t], reg_l2, step_sizes[t] * reg)
        sign_changes += np.sign(w) * np.sign(w_start) < 0
        lazy = _lazy_entry(w_start, constant, start, end, step_sizes, reg_l2, reg, scale, weighted)
        assert abs(lazy - w) <= 1e-12 * (1.0 + abs(w)), (start, end, reg_l2, reg, constant, w_start)
    # The bisection branch must have been exercised.
    assert sign_changes > 50


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "csr"])
def test_trace_and_variance_match(sparse: bool) -> None:
    problem = _problem("multinomial", sparse)
    results = [
        saga(problem, max_epochs=N_EPOCHS, batch_size=4, trace=True, variance_draws=5, f_star=0.0, seed=1, backend=backend)
        for backend in ("torch", "numba")
    ]
    torch_trace, numba_trace = (result.trace for result in results)
    assert numba_trace.epoch == torch_trace.epoch
    assert numba_trace.grad_evals == torch_trace.grad_evals
    np.testing.assert_allclose(numba_trace.objective, torch_trace.objective, rtol=1e-12)
    np.testing.assert_allclose(numba_trace.variance, torch_trace.variance, rtol=1e-9)


def test_auto_backend_picks_numba_on_cpu() -> None:
    assert saga(_problem("squared", sparse=False), max_epochs=1).backend == "numba"


def test_missing_numba(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Without numba, backend='numba' raises ImportError and 'auto' falls back to torch with a log message."""
    monkeypatch.setitem(sys.modules, "numba", None)
    monkeypatch.delitem(sys.modules, "unrolled.solvers.numba_kernels")
    monkeypatch.setattr(stochastic, "_fallback_logged", False)
    problem = _problem("squared", sparse=False)
    with pytest.raises(ImportError, match="backend='numba' needs numba"):
        saga(problem, max_epochs=1, backend="numba")
    with caplog.at_level(logging.INFO, logger="unrolled.solvers.stochastic"):
        result = saga(problem, max_epochs=1, backend="auto")
        first_log = caplog.text
        caplog.clear()
        saga(problem, max_epochs=1, backend="auto")
        second_log = caplog.text
    assert result.backend == "torch"
    assert "numba failed to import" in first_log
    # The fallback is logged once per process.
    assert "numba failed to import" not in second_log


def test_invalid_backend() -> None:
    with pytest.raises(ValueError, match="backend must be one of"):
        sgd(_problem("squared", sparse=False), max_epochs=1, backend="jax")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_problem_uses_torch_backend() -> None:
    problem = FiniteSum(torch.randn(16, 3), torch.randn(16), "squared", device="cuda")
    assert sgd(problem, max_epochs=1).backend == "torch"
    with pytest.raises(ValueError, match="runs on CPU"):
        sgd(problem, max_epochs=1, backend="numba")


def test_numba_backend_rejects_float16_problem() -> None:
    problem = FiniteSum(torch.ones(4, 2), torch.zeros(4), "squared", dtype=torch.float16)
    with pytest.raises(ValueError, match="float32 or float64"):
        sgd(problem, max_epochs=1, backend="numba")
