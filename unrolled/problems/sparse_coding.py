r"""The reference sparse-coding problem of the LISTA literature.

``A`` (m × n, default 250 × 500) has i.i.d. :math:`\mathcal N(0, 1/m)` entries and columns scaled to
unit ℓ2 norm; ``x`` has a Bernoulli(``nonzero_prob``) support with :math:`\mathcal N(0, 1)` values; and
:math:`y = Ax + w`.

Noise convention: at ``snr_db = s`` each sample gets white Gaussian noise of standard deviation
:math:`\sigma_i = \|Ax_i\|_2 / \sqrt{m} \cdot 10^{-s/20}`, so that :math:`10\log_{10}(\|Ax_i\|^2 / E\|w_i\|^2) = s`
for every sample. ``snr_db = None`` is noiseless.

Ill-conditioned variant: with ``condition_number = κ`` the singular values of the Gaussian matrix
are replaced by a geometric sequence from 1 to 1/κ before the columns are normalised; the
normalisation moves the final condition number slightly away from κ (:attr:`SparseCoding.condition_number_actual`).

Reference: Chen, Liu, Wang, Yin, "Theoretical linear convergence of unfolded ISTA and its practical
weights and thresholds", NeurIPS 2018, arXiv:1808.10038 (setting of section 4).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from unrolled.problems.base import Problem, add_noise, check_common_arguments, seeded_generator


def gaussian_operator(m: int, n: int, seed: int, condition_number: float | None = None) -> Tensor:
    """Return a float64 (m, n) matrix with N(0, 1/m) entries and unit-norm columns (see module docstring)."""
    if m < 1 or n < 1:
        raise ValueError(f"operator size must be positive, got m={m}, n={n}.")
    generator = seeded_generator(seed)
    A = torch.randn(m, n, generator=generator, dtype=torch.float64) / math.sqrt(m)
    if condition_number is not None:
        # torch.logspace(0, -inf, k) contains NaN, so an infinite kappa would silently fill A with NaN.
        if not (math.isfinite(condition_number) and condition_number >= 1):
            raise ValueError(f"condition_number must be a finite number >= 1, got {condition_number}.")
        U, _, Vh = torch.linalg.svd(A, full_matrices=False)
        singular_values = torch.logspace(0, -math.log10(condition_number), U.shape[1], dtype=torch.float64)
        A = U @ torch.diag(singular_values) @ Vh
    return A / torch.linalg.vector_norm(A, dim=0, keepdim=True)


class SparseCoding(Problem):
    """Sparse coding with a Gaussian dictionary (module docstring has the model and conventions).

    Args:
        m, n: operator size.
        nonzero_prob: probability that an entry of x is non-zero.
        snr_db: signal-to-noise ratio in dB per sample; None for noiseless measurements.
        condition_number: target condition number κ of A, or None for the plain Gaussian matrix.
        operator_seed, train_seed, val_seed, test_seed: seeds of A and of the three data streams.
        n_val, n_test: sizes of the fixed validation and test sets.
    """

    name = "sparse_coding"

    def __init__(
        self,
        m: int = 250,
        n: int = 500,
        nonzero_prob: float = 0.1,
        snr_db: float | None = None,
        condition_number: float | None = None,
        operator_seed: int = 0,
        train_seed: int = 1,
        val_seed: int = 2,
        test_seed: int = 3,
        n_val: int = 1000,
        n_test: int = 1000,
    ) -> None:
        if not 0 < nonzero_prob <= 1:
            raise ValueError(f"nonzero_prob must lie in (0, 1], got {nonzero_prob}.")
        check_common_arguments(snr_db, n_val, n_test)
        self.nonzero_prob = nonzero_prob
        self.snr_db = snr_db
        self.condition_number = condition_number
        self.operator_seed = operator_seed
        self.seeds = {"train": train_seed, "val": val_seed, "test": test_seed}
        self.n_val = n_val
        self.n_test = n_test
        self.A = gaussian_operator(m, n, operator_seed, condition_number)

    def config(self) -> dict[str, Any]:
        return {
            "m": self.m,
            "n": self.n,
            "nonzero_prob": self.nonzero_prob,
            "snr_db": self.snr_db,
            "condition_number": self.condition_number,
            "operator_seed": self.operator_seed,
            "train_seed": self.seeds["train"],
            "val_seed": self.seeds["val"],
            "test_seed": self.seeds["test"],
            "n_val": self.n_val,
            "n_test": self.n_test,
        }

    @property
    def condition_number_actual(self) -> float:
        singular_values = torch.linalg.svdvals(self.A)
        return float(singular_values[0] / singular_values[-1])

    def sample(self, n_samples: int, generator: torch.Generator, split: str = "train") -> tuple[Tensor, Tensor]:
        support = torch.rand(n_samples, self.n, generator=generator, dtype=torch.float64) < self.nonzero_prob
        x = torch.randn(n_samples, self.n, generator=generator, dtype=torch.float64) * support
        return add_noise(x @ self.A.T, self.snr_db, generator), x
