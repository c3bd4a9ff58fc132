"""train.py on instance families: unrolled SVRG / SAGA runs, their cards, resume and errors."""

from __future__ import annotations

import json
import math

import pytest
import pytorch_lightning as pl
import torch

from models.hub import CARD_FILE, WEIGHTS_FILE, sha256_file
from models.module import NonFiniteLossError
from models.training import train_from_config
from models.variance_reduced import STOCHASTIC_NETWORKS, build_stochastic_network, load_variance_reduced_run
from unrolled.report.stochastic import median_suboptimality

N_LAYERS = 3
MAX_STEPS = 4
STEPS_PER_EPOCH = 2
SMALL_RUN = [
    "problem.subset_size=30",
    "problem.n_val=4",
    "problem.n_test=6",
    f"model.n_layers={N_LAYERS}",
    "model.kwargs.batch_size=5",
    "model.instances_per_step=4",
    "model.classical_max_steps=60",
    f"trainer.max_steps={MAX_STEPS}",
    f"data.steps_per_epoch={STEPS_PER_EPOCH}",
    "trainer=cpu",
    "logger=none",
    "+trainer.enable_progress_bar=false",
    "~callbacks.progress_bar",
]


class StopAfterFirstEpoch(pl.Callback):
    def on_train_epoch_end(self, trainer, module) -> None:
        trainer.should_stop = True


class InjectNaN(pl.Callback):
    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if trainer.global_step == 1:
            with torch.no_grad():
                for parameter in module.parameters():
                    parameter.fill_(math.nan)


def _train(compose_train, run_dir, overrides=(), callbacks=(), experiment="saga_breast_cancer"):
    cfg = compose_train([f"experiment={experiment}", *SMALL_RUN, *overrides], run_dir=run_dir)
    return train_from_config(cfg, run_dir, list(callbacks))


@pytest.mark.parametrize("experiment", ["saga_breast_cancer", "svrg_breast_cancer"])
def test_run_writes_card_with_measured_figures(compose_train, tmp_path, experiment):
    result = _train(compose_train, tmp_path, experiment=experiment)

    card = json.loads((tmp_path / CARD_FILE).read_text())
    assert (tmp_path / "report.png").read_bytes().startswith(b"\x89PNG")
    assert card["sha256"] == sha256_file(tmp_path / WEIGHTS_FILE)
    per_layer = card["test_metrics"]["per_layer"]
    assert len(per_layer["median"]) == N_LAYERS + 1
    # Re-measure the last layer's median on the test instances with the exported weights.
    network, family, _ = load_variance_reduced_run(tmp_path)
    instances, _, f_star = family.fixed_set("test")
    with torch.no_grad():
        W = network(instances, index=network.draw(instances, family.draw_generator("test")))[-1]
    assert median_suboptimality(instances, W, f_star) == pytest.approx(per_layer["median"][-1], rel=1e-12)
    assert result["test_log10_subopt"] == per_layer["median"][-1]
    classical = card["test_metrics"]["classical"]
    assert len(classical["steps_needed"]) == N_LAYERS
    assert card["learned"]["step_scales"] == pytest.approx(network.step_scales().tolist())


# Expected on resume: the run folder contains checkpoints, and Lightning replays the end of the epoch without validation.
@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")
@pytest.mark.filterwarnings("ignore:.*could not find the monitored key in the returned metrics")
def test_resume_matches_straight_run(compose_train, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    _train(compose_train, straight)
    _train(compose_train, resumed, callbacks=[StopAfterFirstEpoch()])
    _train(compose_train, resumed, ["resume=true"])

    expected = torch.load(straight / "checkpoints" / "last.ckpt", weights_only=True)
    actual = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)
    assert actual["global_step"] == expected["global_step"] == MAX_STEPS
    for key, value in expected["state_dict"].items():
        assert torch.equal(actual["state_dict"][key], value), key


def test_nonfinite_parameters_stop_training(compose_train, tmp_path):
    with pytest.raises(NonFiniteLossError, match="training loss is nan at global step 1"):
        _train(compose_train, tmp_path, callbacks=[InjectNaN()])


def test_publishing_is_refused_before_training(compose_train, tmp_path):
    with pytest.raises(ValueError, match="publish_as='svrg.small'.*Pass publish_as=null"):
        _train(compose_train, tmp_path, ["publish_as=svrg.small"])
    assert not (tmp_path / "checkpoints").exists()


def test_unknown_network_lists_the_registered_ones():
    with pytest.raises(ValueError, match="unknown stochastic network 'unrolled_sag'.*unrolled_saga"):
        build_stochastic_network("unrolled_sag", 3)
    assert sorted(STOCHASTIC_NETWORKS) == ["unrolled_saga", "unrolled_svrg"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["init_from=some_run"], "init_from='some_run' is not supported"),
        (["protocol=layerwise"], "train end to end only"),
        (["checkpoint_every=2"], "checkpoint_every=2 and compile=False: activation checkpointing and torch.compile apply"),
        (["compile=true"], "checkpoint_every=None and compile=True"),
    ],
)
def test_unsupported_combinations_are_refused(compose_train, tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        _train(compose_train, tmp_path, overrides)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model=unrolled_saga"], "model=unrolled_saga trains on an instance family"),
        (["problem=breast_cancer_subsets"], "only the networks .*got model=alista"),
    ],
)
def test_mismatched_model_and_problem_are_refused(compose_train, tmp_path, overrides, message):
    cfg = compose_train([*overrides, "trainer=cpu", "logger=none"], run_dir=tmp_path)
    with pytest.raises(ValueError, match=message):
        train_from_config(cfg, tmp_path)


def test_loading_rejects_changed_weights(compose_train, tmp_path):
    _train(compose_train, tmp_path)
    weights = tmp_path / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x00")
    with pytest.raises(ValueError, match="sha256 .* does not match"):
        load_variance_reduced_run(tmp_path)
