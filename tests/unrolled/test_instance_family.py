"""Instance families of finite sums: splits, seeds, optima and their errors."""

from __future__ import annotations

import pytest
import torch

from unrolled.problems.datasets import load_dataset
from unrolled.problems.instance_family import SubsetInstances, build_family


@pytest.fixture(scope="module")
def family() -> SubsetInstances:
    return SubsetInstances(subset_size=30, n_val=4, n_test=5)


def _distance_to(rows: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
    """Distance from each row of ``rows`` to the nearest row of ``pool``, computed exactly (no matrix-product shortcut)."""
    return torch.cdist(rows, pool, compute_mode="donot_use_mm_for_euclid_dist").min(dim=1).values


def test_spec_rebuilds_the_same_family(family):
    rebuilt = build_family(family.spec())
    instances, W, f_star = family.fixed_set("test")
    again, W_again, f_again = rebuilt.fixed_set("test")
    assert rebuilt.spec() == family.spec()
    assert torch.equal(instances.features, again.features)
    assert torch.equal(f_star, f_again)


def test_test_instances_come_from_the_held_out_split(family):
    """Test instances use test-split samples only, training and validation ones training-split samples only."""
    data = load_dataset("breast_cancer", seed=0)
    test, _, _ = family.fixed_set("test")
    val, _, _ = family.fixed_set("val")
    train = family.sample(3, torch.Generator().manual_seed(0), "train")
    for instances, pool, other in ((test, data.X_test, data.X_train), (val, data.X_train, data.X_test), (train, data.X_train, data.X_test)):
        rows = instances.features[..., :-1].reshape(-1, data.X_train.shape[1])
        assert _distance_to(rows, pool).max().item() == 0.0
        assert _distance_to(rows, other).min().item() > 1e-3


def test_fixed_sets_hold_the_optima(family):
    instances, W, f_star = family.fixed_set("val")
    assert instances.n_instances == 4
    assert instances.n_samples == 30
    assert instances.gradient(W).abs().max().item() < 1e-10
    torch.testing.assert_close(instances.objectives(W), f_star, rtol=1e-15, atol=0.0)


def test_one_vs_rest_family_is_binary():
    family = SubsetInstances(dataset="digits", positive_class=3, subset_size=20, n_val=2, n_test=2)
    instances, _, _ = family.fixed_set("test")
    assert instances.loss.name == "logistic"
    assert set(torch.unique(instances.targets).tolist()) <= {-1.0, 1.0}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dataset": "synthetic"}, "dataset must be one of .*got 'synthetic'"),
        ({"reg_l2": 0.0}, "reg_l2 must be > 0 .*got 0.0"),
        ({"subset_size": 500}, "subset_size must lie in \\[1, 143\\].*got 500"),
        ({"n_test": 0}, "n_test=0"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SubsetInstances(**kwargs)


def test_unknown_family_is_rejected():
    with pytest.raises(ValueError, match="unknown instance family 'subsets'"):
        build_family({"name": "subsets"})
