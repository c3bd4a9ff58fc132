"""The Lasso duality gap, and FISTA's duality-gap stopping rule, frozen samples and adaptive restart."""

from __future__ import annotations

import math

import pytest
import torch
from sklearn.linear_model import Lasso

from unrolled.objectives import lasso_duality_gap, lasso_objective
from unrolled.solvers import fista

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def _lasso_data(m: int, n: int, batch: int, seed: int = 0, dtype=torch.float64):
    """Return A (m, n) with N(0, 1/m) entries and y = A x_true + noise of std 0.05, x_true 10 % sparse."""
    generator = torch.Generator().manual_seed(seed)
    A = torch.randn(m, n, generator=generator, dtype=torch.float64) / math.sqrt(m)
    support = torch.rand(batch, n, generator=generator, dtype=torch.float64) < 0.1
    x_true = torch.randn(batch, n, generator=generator, dtype=torch.float64) * support
    y = x_true @ A.T + 0.05 * torch.randn(batch, m, generator=generator, dtype=torch.float64)
    return A.to(dtype), y.to(dtype)


def _naive_gap(x: torch.Tensor, y: torch.Tensor, A: torch.Tensor, reg) -> torch.Tensor:
    """Return P(x) - D(theta) written out as in the textbook, theta = rho / max(1, ||A^T rho||_inf / reg), reg one value per sample."""
    rho = y - x @ A.T
    reg = torch.as_tensor(reg, dtype=x.dtype)
    reg = reg if reg.ndim == 0 else reg.squeeze(-1)
    dual_norm = (rho @ A).abs().amax(-1)
    theta = rho / torch.clamp(dual_norm / reg, min=1.0).unsqueeze(-1)
    dual = 0.5 * y.square().sum(-1) - 0.5 * (y - theta).square().sum(-1)
    return lasso_objective(x, y, A, reg.unsqueeze(-1) if reg.ndim else reg) - dual


def _sklearn_solution(A: torch.Tensor, y: torch.Tensor, reg: float, tol: float = 1e-14) -> tuple[torch.Tensor, torch.Tensor]:
    """Return scikit-learn's Lasso coefficients for each row of y and its dual_gap_ (alpha = reg / m)."""
    model = Lasso(alpha=reg / A.shape[0], fit_intercept=False, tol=tol, max_iter=1_000_000)
    model.fit(A.numpy(), y.numpy().T)
    return torch.from_numpy(model.coef_).reshape(y.shape[0], A.shape[1]), torch.as_tensor(model.dual_gap_).reshape(-1)


def _relative(gap: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return gap / (0.5 * y.to(torch.float64).square().sum(-1))


# --- lasso_duality_gap ---------------------------------------------------------------------------


def test_gap_non_negative_at_random_points():
    A, y = _lasso_data(30, 60, batch=50)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(50, 60, generator=generator, dtype=torch.float64) * (torch.rand(50, 60, generator=generator) < 0.3)

    for reg in (0.0, 1e-3, 0.05, 1.0, 100.0):
        gap = lasso_duality_gap(x, y, A, reg)
        assert gap.shape == (50,)
        assert bool((gap >= 0).all()), f"reg {reg}: min gap {float(gap.min())}"


def test_gap_equals_primal_minus_dual():
    A, y = _lasso_data(30, 60, batch=20)
    x = 0.1 * torch.randn(20, 60, generator=torch.Generator().manual_seed(2), dtype=torch.float64)

    for reg in (1e-3, 0.05, 1.0):
        torch.testing.assert_close(lasso_duality_gap(x, y, A, reg), _naive_gap(x, y, A, reg), rtol=1e-10, atol=1e-12)


def test_gap_zero_at_sklearn_solution():
    A, y = _lasso_data(40, 80, batch=10, seed=3)
    reg = 0.02
    x, _ = _sklearn_solution(A, y, reg)

    relative = _relative(lasso_duality_gap(x, y, A, reg), y)

    assert int((x != 0).sum()) > 50
    assert float(relative.max()) < 1e-12


def test_gap_matches_sklearn_dual_gap():
    # scikit-learn reports the gap of its objective, which is ours divided by m. Its tol 1e-4 stops
    # it far from the optimum, so the gaps are well above rounding.
    A, y = _lasso_data(40, 80, batch=10, seed=4)
    reg = 0.02
    x, sklearn_gap = _sklearn_solution(A, y, reg, tol=1e-4)

    gap = lasso_duality_gap(x, y, A, reg)

    assert float(gap.min()) > 1e-8
    torch.testing.assert_close(gap, A.shape[0] * sklearn_gap, rtol=1e-8, atol=0)


def test_gap_bounds_suboptimality():
    A, y = _lasso_data(40, 80, batch=10, seed=5)
    reg = 0.02
    x_star, _ = _sklearn_solution(A, y, reg)
    optimum = lasso_objective(x_star, y, A, reg)

    for max_iter in (1, 10, 100):
        x = fista(A, y, reg, max_iter=max_iter).x
        suboptimality = lasso_objective(x, y, A, reg) - optimum
        gap = lasso_duality_gap(x, y, A, reg)
        assert bool((gap >= suboptimality - 1e-12).all()), f"max_iter {max_iter}"


def test_gap_closed_form_identity_operator():
    # With A = I the solution is soft-thresholding of y, and at x = 0 the dual point is
    # s y with s = min(1, reg / ||y||_inf), so gap(0) = (1 - s)^2 ||y||^2 / 2.
    y = torch.tensor([[3.0, -0.5, 1.2, 0.1], [0.2, -0.1, 0.05, 0.0]], dtype=torch.float64)
    A = torch.eye(4, dtype=torch.float64)
    reg = 0.4
    solution = torch.sign(y) * torch.clamp(y.abs() - reg, min=0.0)
    scale = torch.clamp(reg / y.abs().amax(-1), max=1.0)

    torch.testing.assert_close(lasso_duality_gap(solution, y, A, reg), torch.zeros(2, dtype=torch.float64), rtol=0, atol=1e-15)
    torch.testing.assert_close(
        lasso_duality_gap(torch.zeros_like(y), y, A, reg), 0.5 * (1 - scale).square() * y.square().sum(-1), rtol=1e-14, atol=0
    )


def test_gap_zero_at_origin_above_lambda_max():
    A, y = _lasso_data(20, 40, batch=5, seed=6)
    lambda_max = (y @ A).abs().amax(-1, keepdim=True)

    gap = lasso_duality_gap(torch.zeros(5, 40, dtype=torch.float64), y, A, 1.01 * lambda_max)

    assert bool((gap == 0).all())


def test_gap_reg_zero_is_primal_value():
    A, y = _lasso_data(20, 40, batch=5, seed=7)
    x = 0.1 * torch.randn(5, 40, generator=torch.Generator().manual_seed(8), dtype=torch.float64)

    torch.testing.assert_close(lasso_duality_gap(x, y, A, 0.0), lasso_objective(x, y, A, 0.0), rtol=1e-14, atol=0)


def test_gap_per_sample_reg():
    A, y = _lasso_data(20, 40, batch=6, seed=9)
    x = 0.1 * torch.randn(6, 40, generator=torch.Generator().manual_seed(10), dtype=torch.float64)
    reg = torch.linspace(1e-3, 0.5, 6, dtype=torch.float64).unsqueeze(-1)

    gap = lasso_duality_gap(x, y, A, reg)

    for i in range(6):
        torch.testing.assert_close(gap[i], lasso_duality_gap(x[i], y[i], A, float(reg[i])), rtol=1e-14, atol=0)


def test_gap_per_entry_weights():
    # Weighted l1 norm sum_j w_j |x_j|: the dual constraint is |(A^T theta)_j| <= w_j, so the scale
    # is min(1, min_j w_j / |c_j|). Equal weights must give the scalar result.
    A, y = _lasso_data(20, 40, batch=4, seed=11)
    x = 0.1 * torch.randn(4, 40, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    weights = torch.rand(40, generator=torch.Generator().manual_seed(13), dtype=torch.float64) * 0.2 + 0.01

    rho = y - x @ A.T
    c = rho @ A
    scale = torch.clamp((weights / c.abs()).amin(-1), max=1.0)
    theta = scale.unsqueeze(-1) * rho
    primal = 0.5 * rho.square().sum(-1) + (weights * x.abs()).sum(-1)
    dual = 0.5 * y.square().sum(-1) - 0.5 * (y - theta).square().sum(-1)

    torch.testing.assert_close(lasso_duality_gap(x, y, A, weights), primal - dual, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(
        lasso_duality_gap(x, y, A, torch.full((40,), 0.05, dtype=torch.float64)), lasso_duality_gap(x, y, A, 0.05),
        rtol=1e-14, atol=0,
    )


def test_gap_leading_dimensions_and_dtype():
    A, y = _lasso_data(20, 40, batch=6, seed=14)
    x = 0.1 * torch.randn(6, 40, generator=torch.Generator().manual_seed(15), dtype=torch.float64)
    flat = lasso_duality_gap(x, y, A, 0.05)

    shaped = lasso_duality_gap(x.reshape(2, 3, 40), y.reshape(2, 3, 20), A, 0.05)
    single = lasso_duality_gap(x.float(), y.float(), A.float(), 0.05)
    in_float32 = lasso_duality_gap(x.float(), y.float(), A.float(), 0.05, dtype=None)

    assert shaped.shape == (2, 3)
    torch.testing.assert_close(shaped.reshape(-1), flat, rtol=1e-14, atol=0)
    assert single.dtype == torch.float64
    assert in_float32.dtype == torch.float32
    torch.testing.assert_close(single, flat, rtol=1e-4, atol=1e-6)


def test_gap_with_residual_argument():
    A, y = _lasso_data(20, 40, batch=3, seed=16)
    x = 0.1 * torch.randn(3, 40, generator=torch.Generator().manual_seed(17), dtype=torch.float64)

    torch.testing.assert_close(lasso_duality_gap(x, y, A, 0.05, x @ A.T - y), lasso_duality_gap(x, y, A, 0.05), rtol=0, atol=0)


# --- FISTA with the duality-gap rule ---------------------------------------------------------------


@pytest.mark.parametrize("restart", [None, "gradient", "function"])
def test_fista_gap_rule_reaches_target(restart):
    A, y = _lasso_data(40, 80, batch=30, seed=20)
    reg = 0.02

    result = fista(A, y, reg, max_iter=20_000, gap_tol=1e-6, restart=restart)
    recomputed = _relative(lasso_duality_gap(result.x, y, A, reg), y)

    assert bool(result.converged.all())
    assert float(recomputed.max()) <= 1e-6
    torch.testing.assert_close(result.gap, recomputed, rtol=1e-9, atol=1e-15)
    assert int(result.n_iter_per_sample.max()) == result.n_iter
    assert bool((result.n_iter_per_sample % 10 == 0).all())
    assert result.n_iter < 20_000


@pytest.mark.parametrize("restart", [None, "gradient", "function"])
def test_fista_gap_rule_matches_sklearn(restart):
    A, y = _lasso_data(40, 80, batch=10, seed=21)
    reg = 0.02
    expected, _ = _sklearn_solution(A, y, reg)

    x = fista(A, y, reg, max_iter=50_000, gap_tol=1e-14, restart=restart).x

    error = torch.linalg.vector_norm(x - expected, dim=-1) / torch.linalg.vector_norm(expected, dim=-1)
    assert float(error.max()) <= 1e-6


def test_fista_frozen_samples_equal_separate_runs():
    # Plain FISTA shares one momentum sequence, so a sample frozen after k iterations must be where
    # its own run of k iterations is, although the batch shrank around it.
    A, y = _lasso_data(40, 80, batch=12, seed=22)
    reg = 0.02

    result = fista(A, y, reg, max_iter=20_000, gap_tol=1e-6, check_every=7)

    assert len(set(result.n_iter_per_sample.tolist())) > 2
    for i in range(12):
        alone = fista(A, y[i], reg, max_iter=int(result.n_iter_per_sample[i])).x
        torch.testing.assert_close(result.x[i], alone, rtol=0, atol=1e-12)


@pytest.mark.parametrize("restart", ["gradient", "function"])
def test_fista_restart_decided_per_sample(restart):
    # Early iterations, where the restart tests are decided by clear margins and not by rounding:
    # each sample of the batch must follow its own run, and differ from plain FISTA.
    A, y = _lasso_data(40, 80, batch=8, seed=23)
    reg = 0.02

    batch = fista(A, y, reg, max_iter=60, restart=restart).x
    plain = fista(A, y, reg, max_iter=60).x

    for i in range(8):
        alone = fista(A, y[i], reg, max_iter=60, restart=restart).x
        torch.testing.assert_close(batch[i], alone, rtol=0, atol=1e-10)
    assert float((batch - plain).abs().max()) > 1e-3


def test_fista_restart_cuts_iterations():
    A, y = _lasso_data(60, 120, batch=20, seed=24)
    reg = 0.01

    plain = fista(A, y, reg, max_iter=50_000, gap_tol=1e-8).n_iter_per_sample.double().mean()
    gradient = fista(A, y, reg, max_iter=50_000, gap_tol=1e-8, restart="gradient").n_iter_per_sample.double().mean()
    function = fista(A, y, reg, max_iter=50_000, gap_tol=1e-8, restart="function").n_iter_per_sample.double().mean()

    assert float(gradient) < 0.7 * float(plain)
    assert float(function) < 0.7 * float(plain)


def test_fista_restart_without_gap_rule_converges():
    A, y = _lasso_data(40, 80, batch=5, seed=25)
    reg = 0.02
    expected, _ = _sklearn_solution(A, y, reg)

    result = fista(A, y, reg, max_iter=5000, restart="gradient")

    assert result.gap is None
    torch.testing.assert_close(result.x, expected, rtol=0, atol=1e-8)


def test_fista_default_result_has_no_gap_fields():
    A, y = _lasso_data(20, 40, batch=3, seed=26)

    result = fista(A, y, 0.02, max_iter=50)

    assert result.gap is None
    assert result.converged is None
    assert result.n_iter_per_sample is None
    assert result.n_iter == 50


def test_fista_plain_matches_reference_recursion():
    # The textbook recursion with the same step. The solver forms A z by linearity, so the two agree
    # up to rounding only.
    A, y = _lasso_data(20, 40, batch=4, seed=27)
    reg, step = 0.02, 0.1
    x = x_prev = torch.zeros(4, 40, dtype=torch.float64)
    t = 1.0
    for _ in range(200):
        t_next = (1 + math.sqrt(1 + 4 * t * t)) / 2
        z = x + (t - 1) / t_next * (x - x_prev)
        v = z - step * (z @ A.T - y) @ A
        x_prev, x, t = x, torch.sign(v) * torch.clamp(v.abs() - step * reg, min=0.0), t_next

    result = fista(A, y, reg, step_size=step, max_iter=200)

    torch.testing.assert_close(result.x, x, rtol=0, atol=1e-12)


def test_fista_origin_optimal_stops_before_iterating():
    A, y = _lasso_data(20, 40, batch=4, seed=28)
    lambda_max = float((y @ A).abs().max())

    result = fista(A, y, 1.01 * lambda_max, max_iter=100, gap_tol=1e-6)

    assert result.n_iter == 0
    assert bool(result.converged.all())
    assert bool((result.x == 0).all())
    assert bool((result.gap == 0).all())


def test_fista_zero_measurement_converges_at_origin():
    A, y = _lasso_data(20, 40, batch=3, seed=29)
    y[1] = 0.0

    result = fista(A, y, 0.02, max_iter=5000, gap_tol=1e-6)

    assert int(result.n_iter_per_sample[1]) == 0
    assert float(result.gap[1]) == 0.0
    assert bool((result.x[1] == 0).all())
    assert bool(result.converged.all())


def test_fista_unconverged_samples_report_gap():
    A, y = _lasso_data(40, 80, batch=6, seed=30)
    reg = 0.002

    result = fista(A, y, reg, max_iter=25, gap_tol=1e-10, check_every=10)
    recomputed = _relative(lasso_duality_gap(result.x, y, A, reg), y)

    assert not bool(result.converged.any())
    assert bool((result.n_iter_per_sample == 25).all())
    torch.testing.assert_close(result.gap, recomputed, rtol=1e-9, atol=1e-15)
    torch.testing.assert_close(result.x, fista(A, y, reg, max_iter=25).x, rtol=0, atol=1e-12)


def test_fista_gap_rule_batch_shapes():
    A, y = _lasso_data(30, 60, batch=6, seed=31)
    reg = torch.tensor([0.005, 0.02, 0.1], dtype=torch.float64).reshape(1, 3, 1).expand(2, 3, 1)

    shaped = fista(A, y.reshape(2, 3, 30), reg, max_iter=20_000, gap_tol=1e-7, restart="gradient")
    flat = fista(A, y, reg.reshape(6, 1), max_iter=20_000, gap_tol=1e-7, restart="gradient")

    assert shaped.x.shape == (2, 3, 60)
    assert shaped.gap.shape == (2, 3)
    assert shaped.converged.shape == (2, 3)
    assert shaped.n_iter_per_sample.shape == (2, 3)
    torch.testing.assert_close(shaped.x.reshape(6, 60), flat.x, rtol=0, atol=1e-12)
    recomputed = _relative(lasso_duality_gap(flat.x, y, A, reg.reshape(6, 1)), y)
    assert float(recomputed.max()) <= 1e-7


def test_fista_gap_rule_single_vector():
    A, y = _lasso_data(30, 60, batch=1, seed=32)

    result = fista(A, y[0], 0.02, max_iter=20_000, gap_tol=1e-6, restart="gradient")

    assert result.x.shape == (60,)
    assert result.gap.shape == ()
    assert bool(result.converged)


def test_fista_gap_rule_with_trace():
    A, y = _lasso_data(30, 60, batch=8, seed=33)
    reg = 0.02

    result = fista(A, y, reg, max_iter=20_000, gap_tol=1e-6, restart="gradient", trace=True)

    assert len(result.trace.objective) == result.n_iter + 1
    final = float(lasso_objective(result.x, y, A, reg).mean())
    assert result.trace.objective[-1] == pytest.approx(final, rel=1e-12)
    assert result.trace.objective[-1] < result.trace.objective[0]


def test_fista_gap_rule_with_relative_change_tol():
    A, y = _lasso_data(30, 60, batch=8, seed=34)

    result = fista(A, y, 0.02, max_iter=20_000, tol=1e-3, gap_tol=1e-12)

    assert result.n_iter < 20_000
    assert not bool(result.converged.all())
    assert bool((result.n_iter_per_sample <= result.n_iter).all())


def test_fista_gap_rule_float32():
    A, y = _lasso_data(40, 80, batch=10, seed=35, dtype=torch.float32)
    reg = 0.02

    result = fista(A, y, reg, max_iter=20_000, gap_tol=1e-5, restart="gradient")
    recomputed = _relative(lasso_duality_gap(result.x.double(), y.double(), A.double(), reg), y)

    assert result.x.dtype == torch.float32
    assert bool(result.converged.all())
    assert float(recomputed.max()) <= 1.1e-5


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"gap_tol": -1e-6}, "gap_tol must be a finite number >= 0"),
        ({"gap_tol": math.nan}, "gap_tol must be a finite number >= 0"),
        ({"check_every": 0}, "check_every must be an integer >= 1"),
        ({"check_every": 2.5}, "check_every must be an integer >= 1"),
        ({"restart": "momentum"}, "restart must be None or one of"),
    ],
)
def test_fista_invalid_options_rejected(options, message):
    A, y = _lasso_data(10, 20, batch=2)

    with pytest.raises(ValueError, match=message):
        fista(A, y, 0.02, max_iter=10, **options)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("restart", [None, "gradient", "function"])
def test_fista_gap_rule_cuda_matches_cpu(restart):
    A, y = _lasso_data(40, 80, batch=16, seed=36)
    reg = 0.02

    cpu = fista(A, y, reg, max_iter=20_000, gap_tol=1e-6, restart=restart)
    cuda = fista(A.cuda(), y.cuda(), reg, max_iter=20_000, gap_tol=1e-6, restart=restart)

    assert cuda.x.device.type == "cuda"
    assert bool(cuda.converged.all())
    assert float(_relative(lasso_duality_gap(cuda.x.cpu(), y, A, reg), y).max()) <= 1e-6
    torch.testing.assert_close(cuda.x.cpu(), cpu.x, rtol=0, atol=1e-6)
