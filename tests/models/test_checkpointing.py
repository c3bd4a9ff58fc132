"""Activation checkpointing and last-layer-only forward passes: same values and gradients, less memory."""

from __future__ import annotations

import sys

import pytest
import torch

from models import NETWORKS, build_network
from models.module import UnrolledModule
from unrolled.memory import PeakMemory
from unrolled.problems import SparseCoding

N_LAYERS = 5


def _loss_and_grads(network, y, x, all_layers: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    network.zero_grad()
    x_hats = network(y, all_layers=all_layers)
    loss = (x_hats[-1] - x).square().mean()
    loss.backward()
    return x_hats.detach(), {name: p.grad.clone() for name, p in network.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", sorted(NETWORKS))
@pytest.mark.parametrize("checkpoint_every", [1, 2, N_LAYERS])
def test_checkpointing_same_gradients(single_torch_thread, name, checkpoint_every):
    problem = SparseCoding(m=20, n=40)
    y, x = (t.float() for t in problem.sample(8, torch.Generator().manual_seed(0)))
    network = build_network(name, problem.A.float(), N_LAYERS)
    x_hats, expected = _loss_and_grads(network, y, x, all_layers=True)

    network.checkpoint_every = checkpoint_every
    last, grads = _loss_and_grads(network, y, x, all_layers=False)

    assert last.shape == (1, 8, 40)
    torch.testing.assert_close(last[0], x_hats[-1], rtol=0, atol=0)
    assert grads
    assert grads.keys() == expected.keys()
    for key, grad in expected.items():
        assert torch.isfinite(grad).all(), key
        torch.testing.assert_close(grads[key], grad, rtol=1e-6, atol=1e-7, msg=key)


def test_checkpointing_all_layers_kept(single_torch_thread):
    problem = SparseCoding(m=20, n=40)
    y, _ = problem.sample(4, torch.Generator().manual_seed(1))
    network = build_network("lista_cp", problem.A.float(), N_LAYERS)
    expected = network(y.float())

    network.checkpoint_every = 2
    x_hats = network(y.float())

    torch.testing.assert_close(x_hats, expected, rtol=0, atol=0)


def _training_step_peak(network, y, x) -> int:
    with PeakMemory() as meter:
        loss = (network(y, all_layers=False)[-1] - x).square().mean()
        loss.backward()
        del loss
    return meter.peak_bytes


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the CPU peak is read from /proc (Linux)")
def test_checkpointing_bounds_memory(single_torch_thread):
    """ALISTA stores no weight gradients, so its step memory is activations: linear in depth, cut by checkpointing."""
    problem = SparseCoding(m=250, n=500)
    y, x = (t.float() for t in problem.sample(256, torch.Generator().manual_seed(2)))
    state_bytes = 256 * 500 * 4
    peaks = {}
    for n_layers in (8, 16):
        network = build_network("alista", problem.A.float(), n_layers)
        peaks[n_layers, None] = _training_step_peak(network, y, x)
        network.checkpoint_every = 4
        peaks[n_layers, 4] = _training_step_peak(network, y, x)

    per_layer = (peaks[16, None] - peaks[8, None]) / 8
    assert 2 * state_bytes < per_layer < 8 * state_bytes, peaks
    assert peaks[16, None] / peaks[8, None] == pytest.approx(2.0, rel=0.25), peaks
    # With segments of 4 layers: one stored state per segment plus one segment's activations.
    assert peaks[16, 4] < 0.5 * peaks[16, None], peaks
    assert peaks[16, 4] - peaks[8, 4] < 0.25 * (peaks[16, None] - peaks[8, None]), peaks


@pytest.mark.parametrize("value", [0, -1, True, 1.5, "2"])
def test_network_checkpoint_every_rejected(value):
    network = build_network("alista", SparseCoding(m=20, n=40).A.float(), 3)

    with pytest.raises(ValueError, match=f"checkpoint_every must be a number of layers >= 1.*got {value!r}"):
        network.checkpoint_every = value
    assert network.checkpoint_every is None


def test_checkpointing_single_segment_same_gradients(single_torch_thread):
    problem = SparseCoding(m=20, n=40)
    y, x = (t.float() for t in problem.sample(8, torch.Generator().manual_seed(3)))
    network = build_network("lista_cp", problem.A.float(), 3)
    _, expected = _loss_and_grads(network, y, x, all_layers=True)

    network.checkpoint_every = 10
    _, grads = _loss_and_grads(network, y, x, all_layers=False)

    for key, grad in expected.items():
        torch.testing.assert_close(grads[key], grad, rtol=1e-6, atol=1e-7, msg=key)


def test_module_checkpoint_every_rejected():
    problem = SparseCoding(m=20, n=40).spec()

    with pytest.raises(ValueError, match=r"checkpoint_every must be a number of layers >= 1, or None \(null in a config\) .* got 0"):
        UnrolledModule("alista", 3, problem, checkpoint_every=0)
