"""compile_or_eager: compiled results equal eager ones, and a failed compilation falls back to eager mode."""

from __future__ import annotations

import pytest
import torch

from models import build_network
from models.module import UnrolledModule
from unrolled.compile import CompileFallbackWarning, compile_or_eager
from unrolled.problems import SparseCoding


@pytest.fixture
def problem() -> SparseCoding:
    return SparseCoding(m=20, n=40)


def _batch(problem: SparseCoding, size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    y, x = problem.sample(size, torch.Generator().manual_seed(0))
    return y.float(), x.float()


def test_compiled_network_matches_eager(single_torch_thread, problem):
    network = build_network("alista", problem.A.float(), 3)
    y, x = _batch(problem)
    expected = network(y)
    (expected[-1] - x).square().sum().backward()
    expected_grad = network.step_size.grad.clone()
    network.zero_grad()

    compiled = compile_or_eager(network, "alista", backend="aot_eager")
    x_hats = compiled(y)
    (x_hats[-1] - x).square().sum().backward()

    torch.testing.assert_close(x_hats, expected)
    torch.testing.assert_close(network.step_size.grad, expected_grad)


def test_failed_compilation_falls_back(single_torch_thread, problem):
    calls = []

    def failing_backend(graph_module, example_inputs):
        calls.append(len(example_inputs))
        raise RuntimeError("no code generator on this machine")

    network = build_network("alista", problem.A.float(), 3)
    y, _ = _batch(problem)
    compiled = compile_or_eager(network, "network alista", backend=failing_backend)

    with pytest.warns(CompileFallbackWarning, match="(?s)torch.compile failed for network alista.*no code generator"):
        first = compiled(y)
    second = compiled(y)

    assert len(calls) == 1
    torch.testing.assert_close(first, network(y))
    torch.testing.assert_close(second, network(y))


def test_compiled_network_invalid_input_raises(single_torch_thread, problem):
    compiled = compile_or_eager(build_network("alista", problem.A.float(), 3), "alista", backend="aot_eager")

    with pytest.raises(ValueError, match="20"):
        compiled(torch.zeros(4, 21))


def test_module_compile_training_step_matches_eager(single_torch_thread, problem):
    y, x = _batch(problem)
    eager = UnrolledModule("alista", 3, problem.spec())
    compiled = UnrolledModule("alista", 3, problem.spec(), compile=True)

    expected = eager.training_step((y, x), 0)
    loss = compiled.training_step((y, x), 0)

    torch.testing.assert_close(loss, expected)
    assert compiled.state_dict().keys() == eager.state_dict().keys()
