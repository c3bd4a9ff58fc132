"""Common interface of the problems: seeded on-the-fly training batches and fixed evaluation sets."""

from __future__ import annotations

import abc
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

SPLITS = ("train", "val", "test")


def seeded_generator(*keys: int) -> torch.Generator:
    """Return a CPU generator whose seed is derived from ``keys`` by NumPy's ``SeedSequence``.

    Deriving seeds this way keeps streams for different (seed, rank, batch index) tuples
    statistically independent, which ``seed + index`` does not guarantee.
    """
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, dtype=np.uint64)
    return torch.Generator(device="cpu").manual_seed(int(state[0] >> np.uint64(1)))


def check_common_arguments(snr_db: float | None, n_val: int, n_test: int) -> None:
    """Raise ``ValueError`` for a non-finite ``snr_db`` or empty evaluation sets (checks shared by every problem)."""
    if snr_db is not None and not math.isfinite(snr_db):
        raise ValueError(f"snr_db must be a finite number of dB or None for noiseless, got {snr_db}.")
    if n_val < 1 or n_test < 1:
        raise ValueError(f"n_val and n_test must be >= 1, got n_val={n_val}, n_test={n_test}.")


def add_noise(y: Tensor, snr_db: float | None, generator: torch.Generator) -> Tensor:
    r"""Add white Gaussian noise of standard deviation :math:`\|y_i\|_2/\sqrt{m} \cdot 10^{-\mathrm{snr\_db}/20}` to each row.

    Every sample then has the signal-to-noise ratio ``snr_db`` in expectation:
    :math:`10\log_{10}(\|y_i\|^2 / E\|w_i\|^2) = \mathrm{snr\_db}`. ``None`` returns ``y`` unchanged.
    """
    if snr_db is None:
        return y
    noise_std = torch.linalg.vector_norm(y, dim=-1, keepdim=True) / math.sqrt(y.shape[-1]) * 10 ** (-snr_db / 20)
    return y + noise_std * torch.randn(y.shape, generator=generator, dtype=y.dtype)


class Problem(abc.ABC):
    """A linear inverse problem ``y = A x + w`` with a sampler of (y, x) pairs.

    Subclasses set ``name`` and implement :meth:`sample`, :meth:`config` and the operator ``A``
    (float64, shape (m, n)). Validation and test sets are drawn from their own seeds, so a stored
    :meth:`spec` is enough to regenerate them exactly.
    """

    name: str
    A: Tensor
    # Peak-to-peak range of ``signal(x)`` for PSNR; None where PSNR has no meaning (synthetic codes).
    signal_range: float | None = None
    n_val: int
    n_test: int
    seeds: dict[str, int]

    @abc.abstractmethod
    def sample(self, n_samples: int, generator: torch.Generator, split: str = "train") -> tuple[Tensor, Tensor]:
        """Draw ``n_samples`` pairs, returned as float64 tensors ``y`` (n_samples, m) and ``x`` (n_samples, n)."""

    @abc.abstractmethod
    def config(self) -> dict[str, Any]:
        """Constructor arguments as plain Python values (ints, floats, strings, None, lists)."""

    def spec(self) -> dict[str, Any]:
        """Plain-data description, enough to rebuild the problem with :func:`unrolled.problems.build_problem`."""
        return {"name": self.name, **self.config()}

    def signal(self, x: Tensor) -> Tensor:
        """Map a code ``x`` to the signal it represents (identity unless the problem has a synthesis basis)."""
        return x

    @property
    def m(self) -> int:
        return self.A.shape[0]

    @property
    def n(self) -> int:
        return self.A.shape[1]

    def fixed_set(self, split: str) -> tuple[Tensor, Tensor]:
        """Return the validation (``"val"``) or test (``"test"``) set as float64 ``(y, x)``, cached."""
        if split not in ("val", "test"):
            raise ValueError(f"split must be 'val' or 'test', got {split!r}.")
        cache = self.__dict__.setdefault("_fixed_sets", {})
        if split not in cache:
            size = self.n_val if split == "val" else self.n_test
            cache[split] = self.sample(size, seeded_generator(self.seeds[split]), split)
        return cache[split]

    def train_loader(self, batch_size: int, steps_per_epoch: int, rank: int = 0, dtype=torch.float32) -> DataLoader:
        """Loader of fresh training batches: batch ``i`` of epoch ``e`` is drawn from seed (train, rank, e·steps + i).

        The sampler exposes ``set_epoch``, which Lightning calls at every epoch start, so a run resumed
        from an end-of-epoch checkpoint draws exactly the batches of the uninterrupted run.
        """
        dataset = SeededBatches(self, batch_size, self.seeds["train"], rank, dtype)
        return DataLoader(dataset, batch_size=None, sampler=EpochSampler(steps_per_epoch))


class SeededBatches(Dataset):
    """Map-style dataset whose item ``index`` is a whole training batch drawn from a derived seed."""

    def __init__(self, problem: Problem, batch_size: int, seed: int, rank: int, dtype: torch.dtype) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        self.problem = problem
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.dtype = dtype

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        y, x = self.problem.sample(self.batch_size, seeded_generator(self.seed, self.rank, index), "train")
        return y.to(self.dtype), x.to(self.dtype)


class EpochSampler(Sampler[int]):
    """Yield batch indices ``epoch·steps_per_epoch + i`` for ``i < steps_per_epoch``."""

    def __init__(self, steps_per_epoch: int) -> None:
        if steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}.")
        self.steps_per_epoch = steps_per_epoch
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        start = self.epoch * self.steps_per_epoch
        return iter(range(start, start + self.steps_per_epoch))

    def __len__(self) -> int:
        return self.steps_per_epoch
