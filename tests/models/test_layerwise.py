"""Layer-wise training: entries trained per stage, rates, stage changes, stop, exact resume, errors and a real run."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.trainer.states import TrainerFn

from models.data import ProblemDataModule
from models.layerwise import LayerwiseTraining
from models.module import UnrolledModule
from unrolled.metrics import nmse_db
from unrolled.problems import SparseCoding

pytestmark = pytest.mark.usefixtures("single_torch_thread")

N_LAYERS = 3
REG = 0.05
LR = 1e-3
# A checkpoint folder of an earlier part of the same run, and Lightning (2.6) replaying the end of the
# interrupted epoch without validation metrics, are both expected on resume.
IGNORE_EXISTING_CHECKPOINTS = pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")
IGNORE_MISSING_MONITOR = pytest.mark.filterwarnings("ignore:.*could not find the monitored key in the returned metrics")


@pytest.fixture
def problem() -> SparseCoding:
    """Sparse coding with a 20 x 40 operator and 64-sample validation and test sets."""
    return SparseCoding(m=20, n=40, n_val=64, n_test=64)


def _module(problem, network: str = "lista_cp", n_layers: int = N_LAYERS, **kwargs) -> UnrolledModule:
    network_kwargs = {} if network == "hyperlista" else {"reg": REG}
    options = {"lr": LR, "lr_schedule": "constant"} | kwargs
    return UnrolledModule(network=network, n_layers=n_layers, problem=problem.spec(), network_kwargs=network_kwargs, **options)


def _data(problem, steps_per_epoch: int = 2, batch_size: int = 16) -> ProblemDataModule:
    return ProblemDataModule(problem, batch_size=batch_size, steps_per_epoch=steps_per_epoch, eval_batch_size=64)


def _trainer(max_steps: int, callbacks: list[pl.Callback], **kwargs) -> pl.Trainer:
    options = {
        "accelerator": "cpu",
        "devices": 1,
        "max_steps": max_steps,
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "num_sanity_val_steps": 0,
    }
    return pl.Trainer(**(options | kwargs), callbacks=callbacks)


def _callback_at(layer: int, stage: int, **kwargs) -> LayerwiseTraining:
    """A callback whose schedule starts at (layer, stage); a patience of 100 keeps it there for a short fit."""
    callback = LayerwiseTraining(**({"lr": LR, "patience": 100} | kwargs))
    callback.load_state_dict({"layer": layer, "stage": stage, "best": math.inf, "wait": 0, "finished": False})
    return callback


def _fit_at(problem, network: str, layer: int, stage: int, max_steps: int = 3) -> tuple[dict[str, torch.Tensor], UnrolledModule]:
    """Fit ``max_steps`` steps in (layer, stage); return the parameters before the fit and the fitted module."""
    pl.seed_everything(0)
    module = _module(problem, network)
    before = {name: parameter.detach().clone() for name, parameter in module.network.named_parameters()}
    _trainer(max_steps, [_callback_at(layer, stage)]).fit(module, datamodule=_data(problem))
    return before, module


def _check_changed_entries(before: dict[str, torch.Tensor], module: UnrolledModule, changed: dict[str, list[int]]) -> None:
    """Entries ``changed[name]`` (along dimension 0) of each parameter moved; all the others are exactly equal."""
    after = dict(module.network.named_parameters())
    assert set(changed) <= set(after)
    for name, initial in before.items():
        for entry in range(initial.shape[0]):
            moved = not torch.equal(after[name][entry], initial[entry])
            assert moved == (entry in changed.get(name, [])), f"{name}[{entry}]"


STAGE_1_CASES = {
    # LISTA-CP, untied: W and the threshold hold one entry per layer.
    "lista_cp_layer2": ("lista_cp", 2, {"W": [1], "threshold": [1]}),
    # LISTA stores S_2..S_K (S has offset 1): layer 2 owns S[0], and layer 1 owns no S at all.
    "lista_layer1": ("lista", 1, {"W": [0], "threshold": [0]}),
    "lista_layer2": ("lista", 2, {"W": [1], "S": [0], "threshold": [1]}),
    "lista_layer3": ("lista", 3, {"W": [2], "S": [1], "threshold": [2]}),
    # TiLISTA: the shared W (one matrix, entries along dimension 0 are its rows) is frozen in stage 1.
    "tilista_layer2": ("tilista", 2, {"step_size": [1], "threshold": [1]}),
}


@pytest.mark.parametrize(("network", "layer", "changed"), list(STAGE_1_CASES.values()), ids=list(STAGE_1_CASES))
def test_stage1_trains_only_active_layer(problem, network, layer, changed):
    before, module = _fit_at(problem, network, layer, stage=1)

    _check_changed_entries(before, module, changed)


def test_later_stage_trains_shared_weight(problem):
    before, module = _fit_at(problem, "tilista", layer=2, stage=2)

    _check_changed_entries(before, module, {"W": list(range(problem.m)), "step_size": [0, 1], "threshold": [0, 1]})


def test_later_stage_trains_earlier_layers(problem):
    before, module = _fit_at(problem, "lista", layer=2, stage=3)

    _check_changed_entries(before, module, {"W": [0, 1], "S": [0], "threshold": [0, 1]})


@pytest.mark.parametrize(("stage", "factor"), [(1, 1.0), (2, 0.2), (3, 0.02)])
def test_stage_lr(problem, stage, factor):
    module = _module(problem)
    trainer = _trainer(2, [_callback_at(2, stage)])

    trainer.fit(module, datamodule=_data(problem))

    assert trainer.lr_scheduler_configs == []
    for group in trainer.optimizers[0].param_groups:
        assert group["lr"] == pytest.approx(LR * factor, rel=1e-12)


def _stub_trainer(optimizer: torch.optim.Optimizer) -> SimpleNamespace:
    """The attributes of a Trainer that the callback reads after a validation check during fit."""
    return SimpleNamespace(
        state=SimpleNamespace(fn=TrainerFn.FITTING),
        sanity_checking=False,
        callback_metrics={},
        optimizers=[optimizer],
        global_step=0,
        should_stop=False,
    )


def _validate(callback: LayerwiseTraining, trainer: SimpleNamespace, module: SimpleNamespace, nmse: float) -> None:
    trainer.callback_metrics["val/nmse_db_active"] = torch.tensor(nmse)
    callback.on_validation_end(trainer, module)


def test_stage_advances_on_patience():
    parameter = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.Adam([parameter], lr=LR)
    parameter.grad = torch.ones(3)
    optimizer.step()
    callback = LayerwiseTraining(lr=LR, patience=2, n_layers=2)
    trainer, module = _stub_trainer(optimizer), SimpleNamespace(active_layer=1)

    # -5.0 and -6.0 improve; -5.9 and -6.0 do not beat -6.0, so the second of them ends stage 1.
    for nmse, wait in [(-5.0, 0), (-6.0, 0), (-5.9, 1)]:
        _validate(callback, trainer, module, nmse)
        assert (callback.layer, callback.stage, callback.wait) == (1, 1, wait), nmse
    assert callback.best == -6.0
    assert len(optimizer.state) == 1
    _validate(callback, trainer, module, -6.0)

    assert (callback.layer, callback.stage, callback.wait, callback.best) == (1, 2, 0, math.inf)
    assert len(optimizer.state) == 0
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.2 * LR, rel=1e-12)
    assert module.active_layer == 1
    assert trainer.should_stop is False


def test_min_delta_counts_small_gains_as_none():
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.ones(1))], lr=LR)
    callback = LayerwiseTraining(lr=LR, patience=1, min_delta=0.5)
    trainer, module = _stub_trainer(optimizer), SimpleNamespace(active_layer=1)
    _validate(callback, trainer, module, -6.0)

    _validate(callback, trainer, module, -6.4)

    assert (callback.layer, callback.stage) == (1, 2)


def test_last_stage_stops_run():
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.ones(1))], lr=LR)
    callback = _callback_at(2, 3, patience=1, n_layers=2)
    trainer, module = _stub_trainer(optimizer), SimpleNamespace(active_layer=2)
    _validate(callback, trainer, module, -6.0)

    _validate(callback, trainer, module, -6.0)

    assert callback.finished is True
    assert trainer.should_stop is True
    assert (callback.layer, callback.stage, callback.best) == (2, 3, -6.0)


class RecordSchedule(pl.Callback):
    """Record (layer, stage, active layer, rate, whether Adam has state) before every training step."""

    def __init__(self, layerwise: LayerwiseTraining) -> None:
        self.layerwise = layerwise
        self.steps: list[tuple[int, int, int, float, bool]] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        optimizer = trainer.optimizers[0]
        state = (
            self.layerwise.layer,
            self.layerwise.stage,
            module.active_layer,
            optimizer.param_groups[0]["lr"],
            bool(optimizer.state),
        )
        self.steps.append(state)


def test_schedule_runs_stages_and_stops(problem):
    # With a min_delta of 100 dB only a stage's first check counts as an improvement, so every stage
    # lasts two checks (4 steps): 2 layers x 3 stages x 4 steps = 24 steps, far below max_steps.
    layerwise = LayerwiseTraining(lr=LR, patience=1, min_delta=100.0, n_layers=2)
    record = RecordSchedule(layerwise)
    module = _module(problem)
    before = {name: parameter.detach().clone() for name, parameter in module.network.named_parameters()}
    trainer = _trainer(100, [layerwise, record], num_sanity_val_steps=2)

    trainer.fit(module, datamodule=_data(problem))

    expected = []
    for layer in (1, 2):
        for stage, factor in ((1, 1.0), (2, 0.2), (3, 0.02)):
            expected += [(layer, stage, layer, LR * factor, step > 0) for step in range(4)]
    assert trainer.global_step == 24
    assert layerwise.finished is True
    assert record.steps == expected
    assert trainer.callback_metrics["layerwise/layer"].item() == 2.0
    assert trainer.callback_metrics["layerwise/stage"].item() == 3.0
    after = dict(module.network.named_parameters())
    for name, initial in before.items():
        assert torch.equal(after[name][2], initial[2]), f"{name}[2] of layer 3, not in the schedule"
        assert not torch.equal(after[name][:2], initial[:2]), f"{name} of layers 1-2"


def test_finished_schedule_trains_nothing(problem):
    layerwise = _callback_at(N_LAYERS, 3)
    layerwise.finished = True
    module = _module(problem)
    before = {name: parameter.detach().clone() for name, parameter in module.network.named_parameters()}
    trainer = _trainer(10, [layerwise])

    trainer.fit(module, datamodule=_data(problem))

    assert trainer.global_step == 0
    for name, parameter in module.network.named_parameters():
        assert torch.equal(parameter, before[name]), name
    assert module.active_layer is None


def test_validation_logs_active_layer(problem):
    module = _module(problem)
    module.active_layer = 2

    metrics = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False).validate(
        module, datamodule=_data(problem), verbose=False
    )[0]

    assert metrics["val/nmse_db_active"] == pytest.approx(metrics["val/nmse_db_layer_02"], abs=1e-6)
    assert metrics["val/nmse_db"] == pytest.approx(metrics[f"val/nmse_db_layer_{N_LAYERS:02d}"], abs=1e-6)


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_training_loss_of_active_layer(problem):
    module = _module(problem)
    module.active_layer = 2
    y, x = (tensor.to(torch.float32) for tensor in problem.fixed_set("val"))

    loss = module.training_step((y, x), 0)

    torch.testing.assert_close(loss, (module.network(y)[1] - x).square().mean(), rtol=1e-6, atol=0)


def _resume_run(problem, run_dir, max_steps: int, resume: bool = False) -> tuple[pl.Trainer, UnrolledModule, LayerwiseTraining]:
    pl.seed_everything(0)
    module = _module(problem, "lista")
    layerwise = LayerwiseTraining(lr=2e-2, patience=2, min_delta=0.1)
    # Without a monitor, last.ckpt is written at every epoch end; with one, pytorch-lightning 2.6 writes it
    # only at the epochs where the monitored value improves.
    checkpoint = ModelCheckpoint(dirpath=run_dir, save_last=True)
    trainer = _trainer(max_steps, [layerwise, checkpoint], enable_checkpointing=True)
    trainer.fit(
        module,
        datamodule=_data(problem, steps_per_epoch=5, batch_size=32),
        ckpt_path=str(run_dir / "last.ckpt") if resume else None,
    )
    return trainer, module, layerwise


RESUME_CAP = 400
# Measured: the run ends after 235 steps, and layer 2's stage 1 runs from step 115 to 130. At step 125 that
# stage has a best NMSE and one check without improvement. The check at step 130 ends the stage only if the
# resumed run restored both.
INTERRUPT_STEP = 125


@IGNORE_EXISTING_CHECKPOINTS
@IGNORE_MISSING_MONITOR
def test_resume_matches_straight_run(problem, tmp_path):
    straight, straight_module, straight_layerwise = _resume_run(problem, tmp_path / "straight", RESUME_CAP)
    _resume_run(problem, tmp_path / "resumed", INTERRUPT_STEP)
    first_part = torch.load(tmp_path / "resumed" / "last.ckpt", weights_only=True)

    resumed, resumed_module, resumed_layerwise = _resume_run(problem, tmp_path / "resumed", RESUME_CAP, resume=True)

    interrupted_state = next(state for key, state in first_part["callbacks"].items() if "LayerwiseTraining" in key)
    assert first_part["global_step"] == INTERRUPT_STEP
    assert (interrupted_state["layer"], interrupted_state["stage"], interrupted_state["wait"]) == (2, 1, 1)
    assert math.isfinite(interrupted_state["best"])
    assert straight_layerwise.finished is True
    assert straight.global_step < RESUME_CAP
    assert resumed.global_step == straight.global_step
    assert resumed_layerwise.state_dict() == straight_layerwise.state_dict()
    for name, value in straight_module.network.state_dict().items():
        assert torch.equal(resumed_module.network.state_dict()[name], value), name
    expected_optimizer = straight.optimizers[0].state_dict()["state"]
    actual_optimizer = resumed.optimizers[0].state_dict()["state"]
    assert actual_optimizer.keys() == expected_optimizer.keys()
    for key, value in expected_optimizer.items():
        assert torch.equal(actual_optimizer[key]["exp_avg"], value["exp_avg"]), key
        assert torch.equal(actual_optimizer[key]["exp_avg_sq"], value["exp_avg_sq"]), key


def test_real_run_improves_every_layer(problem):
    # Measured with this configuration (1 thread): layers 1-3 go from -1.53 / -2.13 / -2.51 dB untrained to
    # -4.35 / -6.05 / -7.60 dB after the full schedule (270 steps), gains of 2.8 / 3.9 / 5.1 dB.
    pl.seed_everything(0)
    module = _module(problem)
    y, x = problem.fixed_set("val")
    with torch.no_grad():
        untrained = [nmse_db(estimate, x).item() for estimate in module.network(y.to(torch.float32))]
    layerwise = LayerwiseTraining(lr=2e-2, patience=1, min_delta=0.1)
    trainer = _trainer(1000, [layerwise])

    trainer.fit(module, datamodule=_data(problem, steps_per_epoch=10, batch_size=64))

    with torch.no_grad():
        trained = [nmse_db(estimate, x).item() for estimate in module.network(y.to(torch.float32))]
    assert layerwise.finished is True
    assert trainer.global_step < 1000
    for k in range(N_LAYERS):
        assert trained[k] < untrained[k] - 2.0, f"layer {k + 1}: {untrained[k]:.2f} dB untrained, {trained[k]:.2f} dB trained"
    assert trained[-1] < -7.0


def _fit_error(problem, module: UnrolledModule, callback: LayerwiseTraining) -> None:
    _trainer(2, [callback]).fit(module, datamodule=_data(problem))


def test_more_layers_than_network(problem):
    with pytest.raises(ValueError, match="layer-wise training of 5 layers was requested, but the network has 3"):
        _fit_error(problem, _module(problem), LayerwiseTraining(n_layers=5))


def test_network_without_per_layer_parameters(problem):
    with pytest.raises(ValueError, match=r"HyperLISTA.per_layer_parameters\(\) lists none; train this network end to end"):
        _fit_error(problem, _module(problem, "hyperlista"), LayerwiseTraining())


def test_weight_decay_rejected(problem):
    with pytest.raises(ValueError, match="layer-wise training needs weight_decay = 0, got 0.0001"):
        _fit_error(problem, _module(problem, weight_decay=1e-4), LayerwiseTraining())


def test_scheduler_rejected(problem):
    with pytest.raises(ValueError, match="build the module with lr_schedule='constant'"):
        _fit_error(problem, _module(problem, lr_schedule="cosine"), LayerwiseTraining())


def test_loss_other_than_mse_last_rejected(problem):
    with pytest.raises(ValueError, match="the module's loss is 'mse_all'; set model.loss=mse_last"):
        _fit_error(problem, _module(problem, loss="mse_all"), LayerwiseTraining())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lr": 0.0}, "lr must be a positive finite number, got 0.0"),
        ({"lr_factors": []}, r"lr_factors must be a non-empty list of positive finite numbers, got \[\]"),
        ({"lr_factors": [1.0, -0.2]}, r"got \[1.0, -0.2\]"),
        ({"patience": 0}, r"patience must be an integer >= 1 \(validation checks\), got 0"),
        ({"min_delta": -1.0}, r"min_delta must be a finite number >= 0 \(dB\), got -1.0"),
        ({"n_layers": 0}, "n_layers must be an integer >= 1 or None, got 0"),
    ],
)
def test_invalid_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LayerwiseTraining(**kwargs)
