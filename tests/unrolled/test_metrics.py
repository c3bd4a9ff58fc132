"""NMSE and PSNR functions and the accumulated LayerwiseNMSE metric against numpy references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio

from unrolled.metrics import LayerwiseNMSE, nmse_db, nmse_db_per_sample, psnr_db, ratio_db, squared_errors

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def _numpy_nmse_db(x_hat: np.ndarray, x: np.ndarray) -> float:
    """Return the aggregate NMSE in dB, 10 log10(sum ||x_hat - x||^2 / sum ||x||^2)."""
    return 10 * math.log10(np.sum((x_hat - x) ** 2) / np.sum(x**2))


def _numpy_nmse_db_per_sample(x_hat: np.ndarray, x: np.ndarray) -> float:
    """Return the per-sample NMSE in dB, the mean over rows of 10 log10(||x_hat_i - x_i||^2 / ||x_i||^2)."""
    ratios = np.sum((x_hat - x) ** 2, axis=-1) / np.sum(x**2, axis=-1)
    return float(np.mean(10 * np.log10(ratios)))


def _estimates(n_layers: int, batch: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return targets x (batch, n) and estimates (n_layers, batch, n) whose error shrinks with the layer."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, n, generator=generator, dtype=torch.float64)
    # Scale the rows differently so that the two conventions give different numbers.
    x = x * torch.logspace(-1, 1, batch, dtype=torch.float64).unsqueeze(-1)
    noise = torch.randn(n_layers, batch, n, generator=generator, dtype=torch.float64)
    scales = torch.logspace(0, -3, n_layers, dtype=torch.float64).view(-1, 1, 1)
    return x + scales * noise, x


def test_nmse_db_closed_form():
    x = torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, 1.0]], dtype=torch.float64)

    # Every sample is off by 10 %, so both conventions give 10 log10(0.01) = -20 dB.
    assert float(nmse_db(0.9 * x, x)) == pytest.approx(-20.0, abs=1e-12)
    assert float(nmse_db_per_sample(0.9 * x, x)) == pytest.approx(-20.0, abs=1e-12)


def test_nmse_db_matches_numpy():
    x_hats, x = _estimates(1, 16, 30, seed=0)
    x_hat = x_hats[0]

    assert float(nmse_db(x_hat, x)) == pytest.approx(_numpy_nmse_db(x_hat.numpy(), x.numpy()), rel=1e-12)
    assert float(nmse_db_per_sample(x_hat, x)) == pytest.approx(_numpy_nmse_db_per_sample(x_hat.numpy(), x.numpy()), rel=1e-12)


def test_nmse_conventions_differ():
    x_hats, x = _estimates(1, 16, 30, seed=0)

    assert abs(float(nmse_db(x_hats[0], x)) - float(nmse_db_per_sample(x_hats[0], x))) > 1.0


def test_nmse_float32_input_computed_in_float64():
    x_hats, x = _estimates(1, 16, 30, seed=1)

    result = nmse_db(x_hats[0].float(), x.float())

    assert result.dtype == torch.float64
    assert float(result) == pytest.approx(_numpy_nmse_db(x_hats[0].float().double().numpy(), x.float().double().numpy()), rel=1e-12)


def test_nmse_exact_reconstruction_floor():
    x = torch.tensor([[1.0, 2.0]], dtype=torch.float64)

    assert float(nmse_db(x, x)) == -300.0
    assert float(nmse_db_per_sample(x, x)) == -300.0


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
def test_nmse_complex(dtype):
    x = torch.tensor([[1 + 1j, 2 - 1j]], dtype=dtype)
    x_hat = x + torch.tensor([[0.1j, -0.1j]], dtype=dtype)

    # Only the imaginary parts differ: error 0.01 + 0.01 against |x|^2 = 2 + 5.
    expected = 10 * math.log10(0.02 / 7)
    assert float(nmse_db(x_hat, x)) == pytest.approx(expected, rel=1e-6)
    assert float(nmse_db_per_sample(x_hat, x)) == pytest.approx(expected, rel=1e-6)


def test_squared_errors_shape_mismatch():
    with pytest.raises(ValueError, match=r"same shape, got \(2, 3\) and \(2, 4\)"):
        squared_errors(torch.ones(2, 3), torch.ones(2, 4))


def test_ratio_db_closed_form():
    error = torch.tensor([1.0, 1e-3, 0.0], dtype=torch.float64)
    reference = torch.tensor([10.0, 1.0, 1.0], dtype=torch.float64)

    torch.testing.assert_close(ratio_db(error, reference), torch.tensor([-10.0, -30.0, -300.0], dtype=torch.float64))


@pytest.mark.parametrize(("data_range", "error", "expected"), [(1.0, 0.1, 20.0), (255.0, 2.55, 40.0), (2.0, 0.02, 40.0)])
def test_psnr_closed_form(data_range, error, expected):
    image = torch.zeros(8, 8, dtype=torch.float64)

    # A constant error e gives MSE = e^2 and PSNR = 10 log10(range^2 / e^2).
    assert float(psnr_db(image + error, image, data_range)) == pytest.approx(expected, abs=1e-12)


def test_psnr_matches_skimage():
    generator = torch.Generator().manual_seed(2)
    image = torch.rand(3, 32, 32, generator=generator, dtype=torch.float64)
    noisy = (image + 0.05 * torch.randn(3, 32, 32, generator=generator, dtype=torch.float64)).clamp(0, 1)

    expected = peak_signal_noise_ratio(image.numpy(), noisy.numpy(), data_range=1.0)

    assert float(psnr_db(noisy, image)) == pytest.approx(expected, rel=1e-12)


def test_layerwise_accumulated_equals_concatenated():
    batches = [_estimates(4, size, 25, seed) for seed, size in enumerate([3, 10, 1, 7])]
    metric = LayerwiseNMSE(n_layers=4)

    for x_hats, x in batches:
        metric.update(x_hats, x)
    result = metric.compute()

    all_x_hats = torch.cat([x_hats for x_hats, _ in batches], dim=1)
    all_x = torch.cat([x for _, x in batches], dim=0)
    for layer in range(4):
        x_hat_np, x_np = all_x_hats[layer].numpy(), all_x.numpy()
        assert float(result["nmse_db"][layer]) == pytest.approx(_numpy_nmse_db(x_hat_np, x_np), rel=1e-12)
        assert float(result["nmse_db_per_sample"][layer]) == pytest.approx(_numpy_nmse_db_per_sample(x_hat_np, x_np), rel=1e-12)
        assert float(result["nmse_db"][layer]) == pytest.approx(float(nmse_db(all_x_hats[layer], all_x)), rel=1e-12)
        assert float(result["nmse_db_per_sample"][layer]) == pytest.approx(float(nmse_db_per_sample(all_x_hats[layer], all_x)), rel=1e-12)


def test_layerwise_output_shape_and_order():
    x_hats, x = _estimates(5, 8, 20, seed=5)
    metric = LayerwiseNMSE(n_layers=5)

    metric.update(x_hats, x)
    result = metric.compute()

    assert result["nmse_db"].shape == (5,)
    assert result["nmse_db"].dtype == torch.float64
    assert bool((result["nmse_db"][1:] < result["nmse_db"][:-1]).all())


def test_layerwise_single_batch_equals_functions():
    x_hats, x = _estimates(3, 6, 20, seed=6)
    metric = LayerwiseNMSE(n_layers=3)

    metric.update(x_hats, x)
    result = metric.compute()

    expected = torch.stack([nmse_db(x_hats[k], x) for k in range(3)])
    expected_per_sample = torch.stack([nmse_db_per_sample(x_hats[k], x) for k in range(3)])
    torch.testing.assert_close(result["nmse_db"], expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(result["nmse_db_per_sample"], expected_per_sample, rtol=1e-12, atol=0)


def test_layerwise_reset():
    first, second = _estimates(2, 4, 10, seed=7), _estimates(2, 4, 10, seed=8)
    metric = LayerwiseNMSE(n_layers=2)

    metric.update(*first)
    metric.reset()
    metric.update(*second)
    result = metric.compute()

    fresh = LayerwiseNMSE(n_layers=2)
    fresh.update(*second)
    torch.testing.assert_close(result["nmse_db"], fresh.compute()["nmse_db"], rtol=0, atol=0)


def test_layerwise_float32_input():
    x_hats, x = _estimates(2, 4, 10, seed=9)
    metric = LayerwiseNMSE(n_layers=2)

    metric.update(x_hats.float(), x.float())
    result = metric.compute()

    expected = float(nmse_db(x_hats[1].float(), x.float()))
    assert float(result["nmse_db"][1]) == pytest.approx(expected, rel=1e-12)


def test_layerwise_wrong_layer_count():
    x_hats, x = _estimates(3, 4, 10, seed=10)
    metric = LayerwiseNMSE(n_layers=2)

    with pytest.raises(ValueError, match=r"expected x_hats of shape \(2, \*\(4, 10\)\) .* got \(3, 4, 10\)"):
        metric.update(x_hats, x)


def test_layerwise_wrong_target_shape():
    x_hats, x = _estimates(2, 4, 10, seed=11)
    metric = LayerwiseNMSE(n_layers=2)

    with pytest.raises(ValueError, match=r"for a target of shape \(4, 9\), got \(2, 4, 10\)"):
        metric.update(x_hats, x[:, :9])


def test_layerwise_zero_layers():
    with pytest.raises(ValueError, match="n_layers must be >= 1, got 0"):
        LayerwiseNMSE(n_layers=0)


def test_layerwise_lower_is_better():
    assert LayerwiseNMSE.higher_is_better is False
