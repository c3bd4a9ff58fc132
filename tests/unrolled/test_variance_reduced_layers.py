"""Batches of finite sums and the unrolled SVRG / SAGA networks built on the classical update rules."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from unrolled.layers.variance_reduced import UnrolledSAGA, UnrolledSVRG
from unrolled.problems.finite_sum import FiniteSum, reg_l2_from_sklearn_C
from unrolled.problems.finite_sum_batch import FiniteSumBatch, subset_instances
from unrolled.solvers.saga import saga
from unrolled.solvers.stochastic import Sampler, batch_smoothness
from unrolled.solvers.svrg import svrg


@pytest.fixture(scope="module")
def cancer() -> tuple[torch.Tensor, torch.Tensor]:
    X, y = load_breast_cancer(return_X_y=True)
    return torch.tensor(StandardScaler().fit_transform(X)), torch.tensor(2.0 * y - 1.0)


@pytest.fixture
def batch(cancer) -> FiniteSumBatch:
    X, y = cancer
    generator = torch.Generator().manual_seed(0)
    return subset_instances(X, y, "logistic", n_instances=3, subset_size=40, generator=generator, reg_l2=1e-2, fit_intercept=True)


def instance(batch: FiniteSumBatch, b: int, reg: float = 0.0) -> FiniteSum:
    """Return instance b of the batch as a FiniteSum (the intercept column is dropped: FiniteSum adds its own)."""
    return FiniteSum(batch.features[b, :, :-1], batch.targets[b], "logistic", reg_l2=batch.reg_l2, reg=reg, fit_intercept=True)


def test_batch_matches_single_problems(batch):
    """Every quantity of the batch equals that of the same instance built alone."""
    W = torch.randn(batch.n_instances, batch.dim, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    index = torch.randint(batch.n_samples, (batch.n_instances, 5), generator=torch.Generator().manual_seed(2))
    rows = batch.rows(index)
    derivatives = batch.derivatives(W, rows, index)
    for b in range(batch.n_instances):
        single = instance(batch, b)
        assert batch.objectives(W)[b].item() == pytest.approx(single.objective(W[b]), rel=1e-14)
        torch.testing.assert_close(batch.gradient(W)[b], single.gradient(W[b]), rtol=1e-13, atol=1e-15)
        torch.testing.assert_close(rows[b], single.rows(index[b]))
        torch.testing.assert_close(derivatives[b], single.derivatives(W[b], single.rows(index[b]), index[b]))
        assert batch.lipschitz()[b].item() == pytest.approx(single.lipschitz(), rel=1e-8)
        sampler = Sampler(single, 4, "uniform", seed=0)
        assert batch.batch_smoothness(4)[b].item() == pytest.approx(batch_smoothness(single, sampler), rel=1e-8)


def test_newton_solve_matches_scikit_learn(cancer):
    """The batched Newton solve reaches a zero gradient and scikit-learn's Newton-Cholesky solution."""
    X, y = cancer
    problem = FiniteSumBatch(X[None], y[None], "logistic", reg_l2=reg_l2_from_sklearn_C(1.0, X.shape[0]), fit_intercept=True)
    W, f_star = problem.solve()
    assert problem.gradient(W).abs().max().item() < 1e-12
    reference = LogisticRegression(C=1.0, solver="newton-cholesky", tol=1e-12, max_iter=100).fit(X.numpy(), (y.numpy() > 0).astype(int))
    w_reference = np.r_[reference.coef_.ravel(), reference.intercept_]
    assert np.abs(W[0, :, 0].numpy() - w_reference).max() < 1e-6
    assert f_star[0].item() == pytest.approx(problem.objectives(W)[0].item(), rel=1e-15)


def test_solve_rejects_nonsmooth_problems(batch):
    problem = FiniteSumBatch(batch.features[..., :-1], batch.targets, "logistic", reg_l2=1e-2, reg=1e-3)
    with pytest.raises(ValueError, match="reg=0.001"):
        problem.solve()


@pytest.mark.parametrize("reg", [0.0, 2e-3])
def test_frozen_svrg_network_is_classical_svrg(batch, reg):
    """With constant step scales and no momentum, the network runs the classical SVRG epoch exactly."""
    b, scale = 4, 0.5
    problem = FiniteSumBatch(batch.features[:1, :, :-1], batch.targets[:1], "logistic", reg_l2=1e-2, reg=reg, fit_intercept=True)
    single = instance(batch, 0, reg)
    n_layers = single.n_samples // b
    index, _ = Sampler(single, b, "uniform", seed=3).draw(n_layers)
    network = UnrolledSVRG(n_layers, batch_size=b, step_scale=scale).double()
    W_network = network(problem, index=index[:, None, :])[-1]
    # The network stores its scale as a float32 logit, so the classical run takes the scale it really uses.
    step = network.step_scales()[0].item() / problem.batch_smoothness(b)[0].item()
    W_classical = svrg(single, step_size=step, batch_size=b, max_epochs=1, seed=3).W
    assert (W_network[0] - W_classical).abs().max().item() < 1e-12


def test_frozen_saga_network_is_classical_saga(batch):
    b, scale = 3, 0.4
    problem = FiniteSumBatch(batch.features[:1, :, :-1], batch.targets[:1], "logistic", reg_l2=1e-2, reg=1e-3, fit_intercept=True)
    single = instance(batch, 0, 1e-3)
    n_layers = single.n_samples // b
    index, _ = Sampler(single, b, "uniform", seed=4).draw(n_layers)
    network = UnrolledSAGA(n_layers, batch_size=b, step_scale=scale).double()
    W_network = network(problem, index=index[:, None, :])[-1]
    step = network.step_scales()[0].item() / problem.batch_smoothness(b)[0].item()
    W_classical = saga(single, step_size=step, batch_size=b, max_epochs=1, seed=4).W
    assert (W_network[0] - W_classical).abs().max().item() < 1e-10


@pytest.mark.parametrize("network_class", [UnrolledSVRG, UnrolledSAGA])
def test_instances_are_independent(batch, network_class):
    """Running B instances together equals running each alone with its own draws."""
    network = network_class(6, batch_size=2, momentum=True).double()
    index = network.draw(batch, torch.Generator().manual_seed(5))
    together = network(batch, index=index)[-1]
    for b in range(batch.n_instances):
        alone = FiniteSumBatch(batch.features[b : b + 1, :, :-1], batch.targets[b : b + 1], "logistic", reg_l2=1e-2, fit_intercept=True)
        torch.testing.assert_close(together[b : b + 1], network(alone, index=index[:, b : b + 1])[-1], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("network_class", [UnrolledSVRG, UnrolledSAGA])
def test_gradients_match_finite_differences(batch, network_class):
    """gradcheck of the final objective with respect to the step and momentum parameters."""
    network = network_class(4, batch_size=2, momentum=True).double()
    index = network.draw(batch, torch.Generator().manual_seed(6))
    problem = FiniteSumBatch(batch.features[..., :-1], batch.targets, "logistic", reg_l2=1e-2, reg=1e-3, fit_intercept=True)

    def final_objective(step_logit, momentum_logit):
        network.step_logit.data, network.momentum_logit.data = step_logit, momentum_logit
        # Assigning .data keeps the parameters leaves; route the inputs through functional_call instead.
        parameters = {"step_logit": step_logit, "momentum_logit": momentum_logit}
        iterates = torch.func.functional_call(network, parameters, (problem,), {"index": index})
        return problem.objectives(iterates[-1])

    inputs = (network.step_logit.detach().clone().requires_grad_(), network.momentum_logit.detach().clone().requires_grad_())
    assert torch.autograd.gradcheck(final_objective, inputs, eps=1e-6, atol=1e-7)


def test_bad_arguments_are_named(batch):
    with pytest.raises(ValueError, match="step_scale must lie in \\(0, 2\\).*got 2.5"):
        UnrolledSVRG(3, step_scale=2.5)
    with pytest.raises(ValueError, match="n_layers must be >= 1, got 0"):
        UnrolledSAGA(0)
    with pytest.raises(ValueError, match="batch_size 50 exceeds the instances' 40 samples"):
        UnrolledSVRG(3, batch_size=50).draw(batch)
    with pytest.raises(ValueError, match="index must have shape \\(3, 3, 1\\)"):
        UnrolledSVRG(3)(batch, index=torch.zeros(2, 3, 1, dtype=torch.long))
    X, y = torch.randn(10, 3, dtype=torch.float64), torch.ones(10, dtype=torch.float64)
    with pytest.raises(ValueError, match="subset_size must lie in \\[1, 10\\].*got 11"):
        subset_instances(X, y, "logistic", n_instances=2, subset_size=11, generator=torch.Generator())


def test_periodic_snapshots_are_classical_svrg_epochs(batch):
    """snapshot_every = n/b makes two epochs of the network equal two classical SVRG epochs."""
    b = 8
    problem = FiniteSumBatch(batch.features[:1, :, :-1], batch.targets[:1], "logistic", reg_l2=1e-2, fit_intercept=True)
    single = instance(batch, 0)
    per_epoch = single.n_samples // b
    sampler = Sampler(single, b, "uniform", seed=5)
    index = torch.cat([sampler.draw(per_epoch)[0], sampler.draw(per_epoch)[0]])
    network = UnrolledSVRG(2 * per_epoch, batch_size=b, snapshot_every=per_epoch).double()
    W_network = network(problem, index=index[:, None, :])[-1]
    step = network.step_scales()[0].item() / problem.batch_smoothness(b)[0].item()
    classical = svrg(single, step_size=step, batch_size=b, max_epochs=2, seed=5, trace=True)
    assert (W_network[0] - classical.W).abs().max().item() < 1e-12
    # Evaluations: n for each snapshot and 2b per layer, as the classical trace counts them.
    assert network.grad_evals(problem)[-1] == classical.trace.grad_evals[-1]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("network_class", [UnrolledSVRG, UnrolledSAGA])
def test_cuda_matches_cpu(batch, network_class):
    """Networks and classical solvers give the CPU iterates on CUDA (draws come from the CPU generator)."""
    network = network_class(5, batch_size=4, momentum=True).double()
    index = network.draw(batch, torch.Generator().manual_seed(8))
    cpu = network(batch, index=index)[-1]
    on_cuda = FiniteSumBatch(batch.features[..., :-1].cuda(), batch.targets.cuda(), "logistic", reg_l2=1e-2, fit_intercept=True)
    cuda = network.cuda()(on_cuda, index=index.cuda())[-1]
    torch.testing.assert_close(cuda.cpu(), cpu, rtol=0, atol=1e-12)

    single = instance(batch, 0)
    single_cuda = FiniteSum(batch.features[0, :, :-1], batch.targets[0], "logistic", reg_l2=1e-2, fit_intercept=True, device="cuda")
    solver = svrg if network_class is UnrolledSVRG else saga
    expected = solver(single, batch_size=4, max_epochs=2, seed=1, backend="torch").W
    actual = solver(single_cuda, batch_size=4, max_epochs=2, seed=1, backend="torch").W
    torch.testing.assert_close(actual.cpu(), expected, rtol=0, atol=1e-12)
