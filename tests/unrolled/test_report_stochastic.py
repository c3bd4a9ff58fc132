"""Comparison of unrolled stochastic networks with their classical method."""

from __future__ import annotations

import pytest
import torch

from unrolled.layers.variance_reduced import UnrolledSAGA, UnrolledSVRG
from unrolled.problems.finite_sum import FiniteSum
from unrolled.problems.instance_family import SubsetInstances
from unrolled.report.stochastic import classical_median_curve, compare_with_classical, median_suboptimality, steps_to_reach
from unrolled.solvers.saga import saga
from unrolled.solvers.svrg import svrg


def test_steps_to_reach_takes_the_best_curve():
    curves = {0.5: [1.0, 0.5, 0.2, 0.1], 1.0: [1.0, 0.3, 0.25, 0.05]}
    assert steps_to_reach([0.4, 0.2, 0.05, 0.01], curves, record_every=5) == [5, 10, 15, None]


@pytest.fixture(scope="module")
def one_instance():
    family = SubsetInstances(subset_size=40, n_val=1, n_test=1)
    instances, _, f_star = family.fixed_set("test")
    single = FiniteSum(instances.features[0, :, :-1], instances.targets[0], "logistic", reg_l2=family.reg_l2, fit_intercept=True)
    return instances, f_star, single


@pytest.mark.parametrize(("network_class", "solver"), [(UnrolledSVRG, svrg), (UnrolledSAGA, saga)])
def test_classical_curve_is_the_classical_solver(one_instance, network_class, solver):
    """The curve run through the network classes equals the classical solver's per-epoch trace."""
    instances, f_star, single = one_instance
    b, scale = 8, 0.5
    per_epoch = single.n_samples // b
    curve = classical_median_curve(
        network_class, instances, f_star, batch_size=b, step_scale=scale, max_steps=3 * per_epoch, record_every=per_epoch,
        generator=torch.Generator().manual_seed(9),
    )
    # The network stores the scale as a float32 logit; the classical run takes the scale the network used.
    used_scale = network_class(1, batch_size=b, step_scale=scale).step_scales()[0].item()
    step = used_scale / instances.batch_smoothness(b)[0].item()
    trace = solver(single, step_size=step, batch_size=b, max_epochs=3, seed=9, trace=True, f_star=float(f_star[0])).trace
    torch.testing.assert_close(torch.tensor(curve), torch.tensor(trace.suboptimality), rtol=1e-9, atol=1e-14)


def test_comparison_reports_steps_per_layer(one_instance):
    instances, f_star, _ = one_instance
    network = UnrolledSAGA(4, batch_size=8, step_scale=1.0).double()
    with torch.no_grad():
        iterates = network(instances, index=network.draw(instances, torch.Generator().manual_seed(1)))
    medians = [median_suboptimality(instances, W, f_star) for W in iterates]
    result = compare_with_classical(network, instances, f_star, medians, max_steps=100, generator_seed=2, step_scales=(0.5, 1.0))
    assert result["record_every"] == 5
    assert len(result["steps_needed"]) == 4
    # Recorded every epoch of 5 steps, so every finite count is a multiple of 5 and no ratio is below 5/k.
    for k, (steps, ratio) in enumerate(zip(result["steps_needed"], result["ratio"]), start=1):
        assert steps is None or (steps % 5 == 0 and ratio == steps / k)
