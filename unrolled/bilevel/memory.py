"""Peak memory that autograd holds for a backward pass, measured on any device.

Reverse-mode hypergradients keep, for every inner step, the tensors that step saves for its backward
pass; implicit differentiation keeps those of one gradient evaluation at a time. The difference is
the memory argument for implicit differentiation, and :class:`SavedTensorMemory` measures it
exactly: every tensor that autograd saves passes through a pack hook
(``torch.autograd.graph.saved_tensors_hooks``), and is released when the graph that holds it is
freed. Storages are counted once, however many saved tensors view them.

The count covers saved tensors only, not parameters, inputs or outputs the caller holds, and not the
allocator's cache: on a GPU, ``torch.cuda.max_memory_allocated`` gives the device's own peak, which
the bilevel study reports beside this one when CUDA is available.
"""

from __future__ import annotations

import torch
from torch import Tensor


class _Held:
    """A saved tensor, registered with the meter while the graph keeps it."""

    __slots__ = ("tensor", "key", "meter")

    def __init__(self, tensor: Tensor, meter: SavedTensorMemory) -> None:
        self.tensor = tensor
        self.meter = meter
        self.key = meter._acquire(tensor)

    def __del__(self) -> None:
        self.meter._release(self.key)


class SavedTensorMemory:
    """Context manager: ``peak_bytes`` is the largest total size of the storages held by saved tensors inside it.

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

    def _pack(self, tensor: Tensor) -> _Held:
        return _Held(tensor, self)

    @staticmethod
    def _unpack(held: _Held) -> Tensor:
        return held.tensor

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
