"""A distribution of finite-sum problems: random subsets of a real data set, for training unrolled stochastic networks.

Training and validation instances are subsets of the data set's training split. Test instances are
subsets of its held-out test split, so no test instance shares a sample with a training one.
Validation and test instances, their optima (Newton's method to a gradient norm of 1e-13) and the
draws the networks use on them come from their own seeds, so a stored :meth:`SubsetInstances.spec`
regenerates them exactly.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from unrolled.problems.base import seeded_generator
from unrolled.problems.datasets import DATASETS, load_dataset, one_vs_rest
from unrolled.problems.finite_sum_batch import FiniteSumBatch, subset_instances

SPLITS = ("train", "val", "test")


class SubsetInstances:
    """Instances: ``subset_size`` samples of a data set, drawn without replacement, with a fixed regulariser.

    Args:
        dataset: a name of :data:`unrolled.problems.datasets.DATASETS` (``synthetic`` excluded: it
            is a single large problem).
        subset_size: samples per instance (n).
        reg_l2: ℓ2 weight; must be > 0, as the optima come from Newton's method.
        fit_intercept: unpenalised intercept.
        positive_class: for a multiclass data set, the class against the rest (a binary logistic
            problem); None keeps the data set's own loss.
        split_seed: seed of the data set's train/test split.
        train_seed, val_seed, test_seed: seeds of the instances (and, for val/test, of the draws).
        n_val, n_test: numbers of validation and test instances.
    """

    name = "finite_sum_subsets"

    def __init__(
        self,
        dataset: str = "breast_cancer",
        subset_size: int = 100,
        reg_l2: float = 1e-3,
        fit_intercept: bool = True,
        positive_class: int | None = None,
        split_seed: int = 0,
        train_seed: int = 1,
        val_seed: int = 2,
        test_seed: int = 3,
        n_val: int = 64,
        n_test: int = 64,
    ) -> None:
        if dataset not in DATASETS or dataset == "synthetic":
            raise ValueError(f"dataset must be one of {[name for name in DATASETS if name != 'synthetic']}, got {dataset!r}.")
        if not reg_l2 > 0:
            raise ValueError(f"reg_l2 must be > 0 (the instances' optima come from Newton's method), got {reg_l2}.")
        if n_val < 1 or n_test < 1:
            raise ValueError(f"n_val and n_test must be >= 1, got n_val={n_val}, n_test={n_test}.")
        data = load_dataset(dataset, seed=split_seed)
        if positive_class is not None:
            data = one_vs_rest(data, positive_class)
        smallest_split = min(data.X_train.shape[0], data.X_test.shape[0])
        if not 1 <= subset_size <= smallest_split:
            raise ValueError(
                f"subset_size must lie in [1, {smallest_split}] (the smaller split of {dataset!r}), got {subset_size}."
            )
        self.data = data
        self.dataset = dataset
        self.subset_size = subset_size
        self.reg_l2 = reg_l2
        self.fit_intercept = fit_intercept
        self.positive_class = positive_class
        self.split_seed = split_seed
        self.seeds = {"train": train_seed, "val": val_seed, "test": test_seed}
        self.n_val = n_val
        self.n_test = n_test
        self._fixed: dict[str, tuple[FiniteSumBatch, Tensor, Tensor]] = {}

    def config(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "subset_size": self.subset_size,
            "reg_l2": self.reg_l2,
            "fit_intercept": self.fit_intercept,
            "positive_class": self.positive_class,
            "split_seed": self.split_seed,
            "train_seed": self.seeds["train"],
            "val_seed": self.seeds["val"],
            "test_seed": self.seeds["test"],
            "n_val": self.n_val,
            "n_test": self.n_test,
        }

    def spec(self) -> dict[str, Any]:
        """Plain-data description, enough to rebuild the family (and its fixed sets) exactly."""
        return {"name": self.name, **self.config()}

    def sample(self, n_instances: int, generator: torch.Generator, split: str = "train") -> FiniteSumBatch:
        """Draw ``n_instances`` instances from the pool of ``split`` (training split for train and val, test split for test)."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
        X, y = (self.data.X_test, self.data.y_test) if split == "test" else (self.data.X_train, self.data.y_train)
        return subset_instances(
            X,
            y,
            self.data.loss if self.positive_class is None else "logistic",
            n_instances=n_instances,
            subset_size=self.subset_size,
            generator=generator,
            reg_l2=self.reg_l2,
            fit_intercept=self.fit_intercept,
            n_classes=self.data.n_classes if self.positive_class is None else None,
        )

    def fixed_set(self, split: str) -> tuple[FiniteSumBatch, Tensor, Tensor]:
        """Return the validation or test instances with their minimisers and optimal values (float64), cached."""
        if split not in ("val", "test"):
            raise ValueError(f"split must be 'val' or 'test', got {split!r}.")
        if split not in self._fixed:
            size = self.n_val if split == "val" else self.n_test
            instances = self.sample(size, seeded_generator(self.seeds[split]), split)
            self._fixed[split] = (instances, *instances.solve())
        return self._fixed[split]

    def draw_generator(self, split: str) -> torch.Generator:
        """Return the generator of the draws that networks use on the fixed ``split`` instances."""
        return seeded_generator(self.seeds[split], 1)


FAMILIES: dict[str, type[SubsetInstances]] = {SubsetInstances.name: SubsetInstances}


def build_family(spec: dict[str, Any]) -> SubsetInstances:
    """Rebuild a family from its :meth:`SubsetInstances.spec`; only names in ``FAMILIES`` are accepted."""
    spec = dict(spec)
    name = spec.pop("name", None)
    if name not in FAMILIES:
        raise ValueError(f"unknown instance family {name!r}; expected one of {sorted(FAMILIES)}.")
    return FAMILIES[name](**spec)
