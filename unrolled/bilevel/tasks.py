"""Bilevel tasks on the packaged real data sets: regularisation selection and data hyper-cleaning.

Each builder loads a data set with :func:`~unrolled.problems.datasets.load_dataset` (its train/test
split and scaling), then splits the training part once more into the inner problem's training
samples and the outer problem's validation samples (stratified for classification, with the same
seed). The test split is never seen by either level; it scores the final model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from sklearn.model_selection import train_test_split
from torch import Tensor

from unrolled.bilevel.problems import HyperCleaning, LassoSelection, LinearModelBilevel, RegularisationSelection
from unrolled.problems.datasets import Dataset, corrupt_labels, load_dataset

# Validation share of the training split: a third, so MNIST 5k gives 2,500 / 1,250 / 1,250 samples.
DEFAULT_VAL_FRACTION = 1 / 3


@dataclass(frozen=True)
class Splits:
    """Training, validation and test samples of one task."""

    X_train: Tensor
    y_train: Tensor
    X_val: Tensor
    y_val: Tensor
    X_test: Tensor
    y_test: Tensor
    dataset: Dataset


def split_dataset(name: str, *, val_fraction: float = DEFAULT_VAL_FRACTION, seed: int = 0, n_samples: int | None = None) -> Splits:
    """Load ``name`` and split its training part into training and validation samples.

    ``n_samples`` sets the size of ``synthetic`` (see :func:`~unrolled.problems.datasets.load_dataset`).
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction}.")
    dataset = load_dataset(name, seed=seed, n_samples=n_samples)
    rows = torch.arange(dataset.X_train.shape[0]).numpy()
    stratify = dataset.y_train.numpy() if dataset.classes is not None else None
    train, val = train_test_split(rows, test_size=val_fraction, random_state=seed, stratify=stratify)
    train, val = torch.from_numpy(train), torch.from_numpy(val)
    return Splits(
        dataset.X_train[train],
        dataset.y_train[train],
        dataset.X_train[val],
        dataset.y_train[val],
        dataset.X_test,
        dataset.y_test,
        dataset,
    )


def regularisation_selection(name: str, *, per_feature: bool = True, seed: int = 0, **kwargs) -> RegularisationSelection:
    """Return the ℓ2-weight selection task of ``breast_cancer`` (logistic), ``digits`` or ``mnist5k`` (multinomial), with an intercept.

    Other keyword arguments (``log_bounds``, ``device``, ``dtype``) go to :class:`RegularisationSelection`.
    """
    if name not in ("breast_cancer", "digits", "mnist5k"):
        raise ValueError(f"regularisation selection is defined on breast_cancer, digits and mnist5k, got {name!r}.")
    splits = split_dataset(name, seed=seed)
    return RegularisationSelection(
        splits.X_train,
        splits.y_train,
        splits.X_val,
        splits.y_val,
        splits.dataset.loss,
        X_test=splits.X_test,
        y_test=splits.y_test,
        fit_intercept=True,
        n_classes=splits.dataset.n_classes if splits.dataset.loss == "multinomial" else None,
        per_feature=per_feature,
        **kwargs,
    )


def lasso_selection(*, seed: int = 0, **kwargs) -> LassoSelection:
    """Return the Lasso-weight selection task on ``diabetes`` (features standardised, target centred).

    Other keyword arguments (``device``, ``dtype``) go to :class:`LassoSelection`.
    """
    splits = split_dataset("diabetes", seed=seed)
    return LassoSelection(splits.X_train, splits.y_train, splits.X_val, splits.y_val, X_test=splits.X_test, y_test=splits.y_test, **kwargs)


@dataclass(frozen=True)
class CleaningTask:
    """A hyper-cleaning problem with the mask of its corrupted training samples."""

    problem: HyperCleaning
    corrupted: Tensor
    corruption: float


def hyper_cleaning(
    name: str,
    corruption: float,
    *,
    reg_l2: float,
    seed: int = 0,
    split_seed: int = 0,
    n_samples: int | None = None,
    device: torch.device | str = "cpu",
) -> CleaningTask:
    """Return data hyper-cleaning on ``mnist5k``, ``digits`` (multinomial) or ``synthetic`` (logistic, 270,000 samples) with a fraction ``corruption`` of training labels replaced.

    A corrupted label is replaced by a uniformly drawn different class
    (:func:`~unrolled.problems.datasets.corrupt_labels`); validation and test labels stay clean.
    ``seed`` draws the corruption and ``split_seed`` the splits, so seeds of one experiment share
    the data and differ in the noise. ``n_samples`` sets the size of ``synthetic``, and ``device``
    is where the problem lives.
    """
    if name not in ("mnist5k", "digits", "synthetic"):
        raise ValueError(f"hyper-cleaning is defined on mnist5k, digits and synthetic, got {name!r}.")
    if not 0 <= corruption < 1:
        raise ValueError(f"corruption must lie in [0, 1) (the fraction of training labels replaced), got {corruption}.")
    splits = split_dataset(name, seed=split_seed, n_samples=n_samples)
    noisy, corrupted = corrupt_labels(splits.y_train, corruption, splits.dataset.classes, seed=seed)
    loss = splits.dataset.loss
    problem = HyperCleaning(
        splits.X_train,
        noisy,
        splits.X_val,
        splits.y_val,
        loss,
        X_test=splits.X_test,
        y_test=splits.y_test,
        fit_intercept=True,
        n_classes=splits.dataset.n_classes if loss == "multinomial" else None,
        reg_l2=reg_l2,
        device=device,
    )
    return CleaningTask(problem=problem, corrupted=corrupted.to(problem.device), corruption=corruption)


def clean_only_error(task: CleaningTask, *, tol: float = 1e-9) -> float:
    """Return the test error of the same model (loss, ``reg_l2``, mean over its samples) fitted to the uncorrupted training samples only.

    The samples all get weight σ(40), within 1e-17 of 1.
    """
    problem = task.problem
    keep = ~task.corrupted
    clean = HyperCleaning(
        problem.X[keep],
        problem.y[keep],
        problem.X_val,
        problem.y_val,
        problem.loss.name,
        X_test=problem.splits["test"][0],
        y_test=problem.splits["test"][1],
        n_classes=problem.n_outputs if problem.loss.name == "multinomial" else None,
        reg_l2=problem.reg_l2,
        device=problem.device,
    )
    # The features already contain the intercept column, so the new problem adds none. Its penalty
    # mask is then reset to leave the intercept row free, as in the original problem.
    clean.penalty_mask = problem.penalty_mask
    hyper = torch.full((clean.n_samples,), 40.0, dtype=problem.dtype, device=problem.device)
    return clean.error_rate(clean.solve_inner(hyper, tol=tol).z, "test")


def uniform_error(problem: LinearModelBilevel, *, tol: float = 1e-9) -> float:
    """Return the test error at the starting hyperparameters (for hyper-cleaning: every sample weighted 1/2)."""
    return problem.error_rate(problem.solve_inner(problem.initial_hyper(), tol=tol).z, "test")
