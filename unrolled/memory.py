"""Peak-memory meters: the tensors that autograd keeps for a backward pass, and a whole block's peak.

:class:`PeakMemory` measures how far memory rises above its level at the start of a block: the
allocator's peak on a CUDA device, the process's peak resident set on a Linux CPU. It counts every
allocation, activation checkpointing included, and the training memory benchmark reports it.

:class:`SavedTensorMemory` counts only the tensors that pass through autograd's pack hook.
Reverse-mode hypergradients keep, for every inner step, the tensors that the step saves for its
backward pass. Implicit differentiation keeps those of one gradient evaluation at a time. This
difference is the memory argument for implicit differentiation, and :class:`SavedTensorMemory`
measures it exactly. Every tensor that autograd saves passes through a pack hook
(``torch.autograd.graph.saved_tensors_hooks``) and is released when the graph that contains it is
freed. Each storage is counted once, however many saved tensors view it.

The count covers saved tensors only. It excludes parameters, inputs and outputs that the caller
keeps, and the allocator's cache. On a GPU, ``torch.cuda.max_memory_allocated`` gives the device's
own peak, which the bilevel study does not measure.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import re
from functools import cache
from pathlib import Path

import torch
from torch import Tensor

PROC_STATUS = Path("/proc/self/status")
# Writing "5" to this file resets the process's peak resident set size, VmHWM (Linux 4.0 and later).
PROC_CLEAR_REFS = Path("/proc/self/clear_refs")
# glibc's mallopt parameter for the size from which malloc maps memory that free returns to the system.
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 128 * 1024


class PeakMemory:
    """Context manager that measures the peak memory of a block above its level at the start.

    ``peak_bytes`` is the maximum memory in use inside the block minus the memory in use when it
    started. On a CUDA device that is ``torch.cuda.max_memory_allocated`` (tensors only; the
    caching allocator's reserve is excluded). On the CPU it is the peak resident set size (VmHWM of
    ``/proc/self/status``, reset at the start) minus the resident set at the start, so it also
    counts memory that is not tensors, and that of the process's other threads.

    On the CPU, entering the block fixes glibc's mmap threshold at 128 KiB and trims the heap. glibc
    otherwise raises the threshold after large blocks are freed, and then keeps freed tensors in
    its heap, where reusing them does not raise the resident set: a second measurement would read
    almost 0. The CPU measurement needs Linux; elsewhere entering the block raises.

    Example::

        with PeakMemory("cpu") as meter:
            loss = network(y, all_layers=False)[-1].square().sum()
            loss.backward()
        meter.peak_bytes
    """

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.peak_bytes = 0
        self._start_bytes = 0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start_bytes = torch.cuda.memory_allocated(self.device)
        elif self.device.type == "cpu":
            if not (PROC_STATUS.is_file() and PROC_CLEAR_REFS.exists()):
                raise RuntimeError(
                    "PeakMemory on the CPU reads the peak resident set from /proc/self/status, which exists on Linux "
                    "only; measure on Linux, or on a CUDA device with PeakMemory('cuda')."
                )
            libc = _glibc()
            if libc is not None:
                libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
                libc.malloc_trim(0)
            PROC_CLEAR_REFS.write_text("5")
            self._start_bytes = _proc_status_bytes("VmRSS")
        else:
            raise ValueError(f"PeakMemory measures 'cpu' or 'cuda' devices, got {self.device}.")
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            peak = _proc_status_bytes("VmHWM")
        self.peak_bytes = max(0, peak - self._start_bytes)


@cache
def _glibc() -> ctypes.CDLL | None:
    """Return the C library when it is glibc (it has mallopt and malloc_trim), else None."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    libc = ctypes.CDLL(name)
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def _proc_status_bytes(field: str) -> int:
    """Return a memory field of /proc/self/status (reported in kB) in bytes."""
    match = re.search(rf"^{field}:\s+(\d+) kB", PROC_STATUS.read_text(), flags=re.MULTILINE)
    if match is None:
        raise RuntimeError(f"/proc/self/status has no {field} line; PeakMemory cannot measure the CPU peak here.")
    return int(match.group(1)) * 1024


class _PackedTensor:
    """Saved tensor that stays registered with the meter until the graph drops it."""

    __slots__ = ("tensor", "key", "meter")

    def __init__(self, tensor: Tensor, meter: SavedTensorMemory) -> None:
        self.tensor = tensor
        self.meter = meter
        self.key = meter._acquire(tensor)

    def __del__(self) -> None:
        self.meter._release(self.key)


class SavedTensorMemory:
    """Context manager that measures the memory of the tensors that autograd saves inside it.

    ``peak_bytes`` is the maximum total size, in bytes, of the storages that saved tensors
    referenced at any time inside the block. ``current_bytes`` is the size they reference now, and
    it returns to 0 once every graph built inside the block is freed.

    Example::

        with SavedTensorMemory() as meter:
            unrolled_hypergradient(problem, hyper, max_iter=100)
        meter.peak_bytes
    """

    def __init__(self) -> None:
        self.current_bytes = 0
        self.peak_bytes = 0
        self._storages: dict[tuple, list[int]] = {}
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)

    def __enter__(self) -> SavedTensorMemory:
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)

    def _pack(self, tensor: Tensor) -> _PackedTensor:
        return _PackedTensor(tensor, self)

    @staticmethod
    def _unpack(packed: _PackedTensor) -> Tensor:
        return packed.tensor

    def _acquire(self, tensor: Tensor) -> tuple:
        storage = tensor.untyped_storage()
        key = (tensor.device, storage.data_ptr())
        entry = self._storages.get(key)
        if entry is None:
            self._storages[key] = [1, storage.nbytes()]
            self.current_bytes += storage.nbytes()
            self.peak_bytes = max(self.peak_bytes, self.current_bytes)
        else:
            entry[0] += 1
        return key

    def _release(self, key: tuple) -> None:
        entry = self._storages.get(key)
        if entry is None:
            return
        entry[0] -= 1
        if entry[0] == 0:
            self.current_bytes -= entry[1]
            del self._storages[key]
