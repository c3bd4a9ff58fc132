"""PeakMemory: the peak of a block above its start, on the CPU (Linux) and on CUDA devices."""

from __future__ import annotations

import sys

import pytest
import torch

from unrolled.memory import PeakMemory

MIB = 2**20
# The resident set also moves with memory outside the block (the interpreter frees pages while it runs),
# by about 0.2 MiB on the machines we measured, so the lower bounds allow 1 MiB less than the tensor.
SLACK = 1 * MIB
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the CPU peak is read from /proc (Linux)")


def _allocate_and_free(n_bytes: int) -> None:
    block = torch.ones(n_bytes // 4)
    del block


def test_peak_memory_sees_freed_tensor():
    with PeakMemory() as meter:
        _allocate_and_free(64 * MIB)

    assert 64 * MIB - SLACK <= meter.peak_bytes < 72 * MIB


def test_peak_memory_repeated_measurements_agree():
    """After a large block is freed, glibc would keep the next one in its heap; the meter must still see it."""
    peaks = []
    for _ in range(3):
        with PeakMemory() as meter:
            _allocate_and_free(32 * MIB)
        peaks.append(meter.peak_bytes)

    assert all(32 * MIB - SLACK <= peak < 40 * MIB for peak in peaks), peaks


def test_peak_memory_excludes_memory_held_before():
    allocated_before = torch.ones(32 * MIB // 4)

    with PeakMemory() as meter:
        _allocate_and_free(8 * MIB)

    assert 8 * MIB - SLACK <= meter.peak_bytes < 16 * MIB
    del allocated_before


def test_peak_memory_rejects_other_devices():
    with pytest.raises(ValueError, match="measures 'cpu' or 'cuda' devices, got meta"):
        with PeakMemory("meta"):
            pass


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_peak_memory_cuda():
    with PeakMemory("cuda") as meter:
        _ = torch.ones(64 * MIB // 4, device="cuda")
        del _

    assert meter.peak_bytes == 64 * MIB
