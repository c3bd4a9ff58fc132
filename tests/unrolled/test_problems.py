"""Sparse-coding problem: the operator, seeded data, the noise convention and the training loader."""

from __future__ import annotations

import json
import math

import pytest
import torch

from unrolled.problems import SparseCoding, build_problem, gaussian_operator, seeded_generator

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def _problem(**kwargs) -> SparseCoding:
    arguments = {"m": 30, "n": 60, "n_val": 50, "n_test": 40}
    arguments.update(kwargs)
    return SparseCoding(**arguments)


@pytest.mark.parametrize(("m", "n"), [(250, 500), (30, 60), (60, 30)])
def test_operator_shape_and_unit_columns(m, n):
    problem = _problem(m=m, n=n)

    assert problem.A.shape == (m, n)
    assert (problem.m, problem.n) == (m, n)
    assert problem.A.dtype == torch.float64
    torch.testing.assert_close(torch.linalg.vector_norm(problem.A, dim=0), torch.ones(n, dtype=torch.float64), rtol=0, atol=1e-14)


def test_operator_entries_scale():
    # Unit columns make the mean square of the entries exactly 1/m. The entries are centred, so their variance is 1/m too.
    A = gaussian_operator(250, 500, seed=0)

    assert float(A.square().mean()) == pytest.approx(1 / 250, rel=1e-12)
    assert float(A.var()) == pytest.approx(1 / 250, rel=1e-3)
    assert float(A.mean()) == pytest.approx(0.0, abs=4 / math.sqrt(250 * 500 * 250))


def test_same_seeds_same_data():
    first, second = _problem(), _problem()

    torch.testing.assert_close(first.A, second.A, rtol=0, atol=0)
    for split in ("val", "test"):
        for a, b in zip(first.fixed_set(split), second.fixed_set(split)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_operator_seed_changes_A():
    assert not torch.equal(_problem(operator_seed=0).A, _problem(operator_seed=5).A)


def test_val_and_test_differ():
    problem = _problem(n_val=40, n_test=40)

    y_val, x_val = problem.fixed_set("val")
    y_test, x_test = problem.fixed_set("test")

    assert not torch.equal(x_val, x_test)
    assert not torch.equal(y_val, y_test)


def test_fixed_set_shapes():
    problem = _problem(n_val=50, n_test=40)

    y_val, x_val = problem.fixed_set("val")
    y_test, x_test = problem.fixed_set("test")

    assert (y_val.shape, x_val.shape) == ((50, 30), (50, 60))
    assert (y_test.shape, x_test.shape) == ((40, 30), (40, 60))
    assert y_val.dtype == x_val.dtype == torch.float64


def test_fixed_set_cached():
    problem = _problem()

    assert problem.fixed_set("val")[0] is problem.fixed_set("val")[0]


@pytest.mark.parametrize("kwargs", [{}, {"snr_db": 20.0, "condition_number": 5.0, "nonzero_prob": 0.2, "val_seed": 11}])
def test_spec_rebuilds_problem(kwargs):
    problem = _problem(**kwargs)

    spec = json.loads(json.dumps(problem.spec()))
    rebuilt = build_problem(spec)

    assert rebuilt.spec() == problem.spec()
    torch.testing.assert_close(rebuilt.A, problem.A, rtol=0, atol=0)
    for split in ("val", "test"):
        for a, b in zip(rebuilt.fixed_set(split), problem.fixed_set(split)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_build_problem_unknown_name():
    with pytest.raises(ValueError, match=r"unknown problem 'deblur'; expected one of \[.*'sparse_coding'"):
        build_problem({"name": "deblur"})


def test_build_problem_missing_name():
    with pytest.raises(ValueError, match="unknown problem None"):
        build_problem({"m": 10})


def test_noiseless_measurements_exact():
    problem = _problem()

    y, x = problem.sample(20, seeded_generator(4))

    torch.testing.assert_close(y, x @ problem.A.T, rtol=0, atol=0)


@pytest.mark.parametrize("snr_db", [40.0, 20.0, 0.0])
def test_empirical_snr_aggregate(snr_db):
    # Convention (module docstring): sample i gets white noise of std ||A x_i|| / sqrt(m) * 10^(-snr_db / 20),
    # so E||w_i||^2 = ||A x_i||^2 * 10^(-snr_db / 10) for every sample.
    problem = _problem(m=50, n=100, snr_db=snr_db)

    y, x = problem.sample(4000, seeded_generator(5))
    clean = x @ problem.A.T
    noise = y - clean
    empirical = 10 * math.log10(float(clean.square().sum() / noise.square().sum()))

    assert empirical == pytest.approx(snr_db, abs=0.1)


@pytest.mark.parametrize("snr_db", [40.0, 20.0])
def test_empirical_snr_per_sample(snr_db):
    problem = _problem(m=50, n=100, snr_db=snr_db)

    y, x = problem.sample(4000, seeded_generator(6))
    clean = x @ problem.A.T
    noise_ratio = (y - clean).square().sum(-1) / clean.square().sum(-1)

    # Each ratio is chi-square with m degrees of freedom over m, times 10^(-snr_db / 10): mean 1, std sqrt(2 / m).
    assert float(noise_ratio.mean()) * 10 ** (snr_db / 10) == pytest.approx(1.0, abs=0.02)
    assert float(noise_ratio.std()) * 10 ** (snr_db / 10) == pytest.approx(math.sqrt(2 / 50), rel=0.1)


def test_noise_is_white():
    problem = _problem(m=50, n=100, snr_db=10.0)

    y, x = problem.sample(4000, seeded_generator(7))
    clean = x @ problem.A.T
    noise = (y - clean) / (torch.linalg.vector_norm(clean, dim=-1, keepdim=True) / math.sqrt(50) * 10 ** (-10.0 / 20))
    covariance = noise.T @ noise / noise.shape[0]

    torch.testing.assert_close(covariance, torch.eye(50, dtype=torch.float64), rtol=0, atol=0.1)


@pytest.mark.parametrize("nonzero_prob", [0.05, 0.1, 0.3])
def test_nonzero_fraction(nonzero_prob):
    problem = _problem(m=50, n=100, nonzero_prob=nonzero_prob)

    _, x = problem.sample(2000, seeded_generator(8))
    fraction = float((x != 0).double().mean())
    standard_error = math.sqrt(nonzero_prob * (1 - nonzero_prob) / x.numel())

    assert abs(fraction - nonzero_prob) < 5 * standard_error


def test_nonzero_values_standard_normal():
    problem = _problem(m=50, n=100)

    _, x = problem.sample(2000, seeded_generator(9))
    values = x[x != 0]

    assert float(values.mean()) == pytest.approx(0.0, abs=5 / math.sqrt(values.numel()))
    assert float(values.std()) == pytest.approx(1.0, abs=0.02)


@pytest.mark.parametrize("kappa", [5.0, 30.0, 50.0])
def test_condition_number_near_kappa(kappa):
    problem = _problem(m=250, n=500, condition_number=kappa)

    actual = float(torch.linalg.cond(problem.A))

    assert actual == pytest.approx(kappa, rel=0.05)
    assert problem.condition_number_actual == pytest.approx(actual, rel=1e-10)


def test_condition_number_columns_still_unit():
    problem = _problem(condition_number=30.0)

    torch.testing.assert_close(torch.linalg.vector_norm(problem.A, dim=0), torch.ones(60, dtype=torch.float64), rtol=0, atol=1e-14)


def test_plain_operator_not_ill_conditioned():
    # Guards the test above: a plain 250 x 500 Gaussian A has condition number near (1 + sqrt(1/2)) / (1 - sqrt(1/2)) = 5.8.
    assert float(torch.linalg.cond(_problem(m=250, n=500).A)) < 7.0


def _batches(loader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(y.clone(), x.clone()) for y, x in loader]


def _same_batches(first, second) -> bool:
    return all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, second, strict=True))


def test_train_loader_reproducible():
    problem = _problem()

    first = _batches(problem.train_loader(batch_size=8, steps_per_epoch=3))
    second = _batches(_problem().train_loader(batch_size=8, steps_per_epoch=3))

    assert len(first) == 3
    assert _same_batches(first, second)


def test_train_loader_batch_shapes_and_dtype():
    problem = _problem()

    y, x = next(iter(problem.train_loader(batch_size=8, steps_per_epoch=3)))

    assert (y.shape, x.shape) == ((8, 30), (8, 60))
    assert y.dtype == x.dtype == torch.float32


def test_train_loader_float64():
    y, x = next(iter(_problem().train_loader(batch_size=4, steps_per_epoch=1, dtype=torch.float64)))

    assert y.dtype == x.dtype == torch.float64
    torch.testing.assert_close(y, x @ _problem().A.T, rtol=0, atol=1e-14)


def test_train_loader_batches_differ_within_epoch():
    batches = _batches(_problem().train_loader(batch_size=8, steps_per_epoch=3))

    assert not torch.equal(batches[0][1], batches[1][1])
    assert not torch.equal(batches[1][1], batches[2][1])


def test_train_loader_differs_across_epochs():
    loader = _problem().train_loader(batch_size=8, steps_per_epoch=3)

    epoch_0 = _batches(loader)
    loader.sampler.set_epoch(1)
    epoch_1 = _batches(loader)
    loader.sampler.set_epoch(0)
    epoch_0_again = _batches(loader)

    assert all(not torch.equal(a[1], b[1]) for a, b in zip(epoch_0, epoch_1))
    assert _same_batches(epoch_0, epoch_0_again)


def test_train_loader_epoch_matches_batch_index():
    # Batch i of epoch e is drawn from seed (train_seed, rank, e * steps_per_epoch + i).
    problem = _problem(train_seed=7)
    loader = problem.train_loader(batch_size=8, steps_per_epoch=3, rank=2, dtype=torch.float64)

    loader.sampler.set_epoch(2)
    batches = _batches(loader)
    expected = problem.sample(8, seeded_generator(7, 2, 2 * 3 + 1))

    torch.testing.assert_close(batches[1][0], expected[0], rtol=0, atol=0)
    torch.testing.assert_close(batches[1][1], expected[1], rtol=0, atol=0)


def test_train_loader_differs_across_ranks():
    problem = _problem()

    rank_0 = _batches(problem.train_loader(batch_size=8, steps_per_epoch=3, rank=0))
    rank_1 = _batches(problem.train_loader(batch_size=8, steps_per_epoch=3, rank=1))

    assert all(not torch.equal(a[1], b[1]) for a, b in zip(rank_0, rank_1))


def test_train_batches_not_in_fixed_sets():
    problem = _problem(n_val=64, n_test=64)

    train_x = torch.cat([x for _, x in _batches(problem.train_loader(batch_size=16, steps_per_epoch=4, dtype=torch.float64))])
    for split in ("val", "test"):
        fixed_x = problem.fixed_set(split)[1]
        matches = (train_x.unsqueeze(1) == fixed_x.unsqueeze(0)).all(-1)
        assert not bool(matches.any()), split


def test_train_seed_changes_batches():
    first = _batches(_problem(train_seed=1).train_loader(batch_size=8, steps_per_epoch=2))
    second = _batches(_problem(train_seed=2).train_loader(batch_size=8, steps_per_epoch=2))

    assert all(not torch.equal(a[1], b[1]) for a, b in zip(first, second))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"nonzero_prob": 0.0}, r"nonzero_prob must lie in \(0, 1\], got 0\.0"),
        ({"nonzero_prob": 1.5}, r"nonzero_prob must lie in \(0, 1\], got 1\.5"),
        ({"nonzero_prob": -0.1}, r"nonzero_prob must lie in \(0, 1\], got -0\.1"),
        ({"snr_db": math.inf}, r"snr_db must be a finite number of dB or None for noiseless, got inf"),
        ({"snr_db": math.nan}, r"snr_db must be a finite number of dB or None for noiseless, got nan"),
        ({"n_val": 0}, r"n_val and n_test must be >= 1, got n_val=0, n_test=40"),
        ({"n_test": -1}, r"n_val and n_test must be >= 1, got n_val=50, n_test=-1"),
        ({"condition_number": 0.5}, r"condition_number must be a finite number >= 1, got 0\.5"),
        ({"condition_number": math.nan}, r"condition_number must be a finite number >= 1, got nan"),
        ({"condition_number": math.inf}, r"condition_number must be a finite number >= 1, got inf"),
        ({"m": 0}, r"operator size must be positive, got m=0, n=60"),
        ({"n": -3}, r"operator size must be positive, got m=30, n=-3"),
    ],
)
def test_invalid_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _problem(**kwargs)


def test_fixed_set_invalid_split():
    with pytest.raises(ValueError, match=r"split must be 'val' or 'test', got 'train'"):
        _problem().fixed_set("train")


def test_train_loader_invalid_batch_size():
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        _problem().train_loader(batch_size=0, steps_per_epoch=3)


def test_train_loader_invalid_steps_per_epoch():
    with pytest.raises(ValueError, match="steps_per_epoch must be >= 1, got 0"):
        _problem().train_loader(batch_size=4, steps_per_epoch=0)


def test_seeded_generator_deterministic():
    first = torch.rand(5, generator=seeded_generator(3, 1, 4))
    second = torch.rand(5, generator=seeded_generator(3, 1, 4))

    assert torch.equal(first, second)


@pytest.mark.parametrize("other_keys", [(3, 1, 5), (3, 2, 4), (4, 1, 4)])
def test_seeded_generator_keys_matter(other_keys):
    reference = torch.rand(5, generator=seeded_generator(3, 1, 4))

    assert not torch.equal(reference, torch.rand(5, generator=seeded_generator(*other_keys)))


def test_build_problem_unknown_parameter():
    with pytest.raises(ValueError, match=r"problem 'sparse_coding' has no parameter 'snr'; it accepts m, n, .*snr_db"):
        build_problem({"name": "sparse_coding", "snr": 20})
