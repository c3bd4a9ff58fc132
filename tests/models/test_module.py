"""UnrolledModule: argument checks, losses, per-layer NMSE logged by validation and test, non-finite guards."""

from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
import torch

from models.data import ProblemDataModule
from models.module import NonFiniteLossError, UnrolledModule
from unrolled.metrics import nmse_db, nmse_db_per_sample
from unrolled.objectives import lasso_objective
from unrolled.problems import SparseCoding
from unrolled.solvers import ista

pytestmark = pytest.mark.usefixtures("zoo_checkpoints")

N_LAYERS = 4
REG = 0.05


def _module(problem, network: str = "lista_cp", **kwargs) -> UnrolledModule:
    return UnrolledModule(network=network, n_layers=N_LAYERS, problem=problem.spec(), network_kwargs={"reg": REG}, **kwargs)


def _trainer(**kwargs) -> pl.Trainer:
    options = {
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
    }
    return pl.Trainer(**(options | kwargs))


def _data(problem, eval_batch_size: int = 64) -> ProblemDataModule:
    return ProblemDataModule(problem, batch_size=8, steps_per_epoch=2, eval_batch_size=eval_batch_size)


def _float32(problem, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    y, x = problem.fixed_set(split)
    return y.to(torch.float32), x.to(torch.float32)


def test_loss_invalid(small_problem):
    with pytest.raises(ValueError, match=r"loss must be one of \('mse_last', 'mse_all', 'lasso'\), got 'l1'"):
        _module(small_problem, loss="l1")


@pytest.mark.parametrize("lr", [0.0, -1e-3, math.nan, math.inf])
def test_lr_invalid(small_problem, lr):
    with pytest.raises(ValueError, match="lr must be a positive finite number"):
        _module(small_problem, lr=lr)


def test_unknown_network(small_problem):
    with pytest.raises(ValueError, match="unknown network 'alista2'"):
        _module(small_problem, network="alista2")


def test_hparams_plain_data(small_problem):
    module = _module(small_problem)

    assert dict(module.hparams) == {
        "network": "lista_cp",
        "n_layers": N_LAYERS,
        "problem": small_problem.spec(),
        "network_kwargs": {"reg": REG},
        "loss": "mse_last",
        "lasso_reg": None,
        "lr": 1e-3,
        "weight_decay": 0.0,
        "lr_min_ratio": 0.01,
        "lr_schedule": "cosine",
        "checkpoint_every": None,
        "compile": False,
    }


def test_network_float32_operator(small_problem):
    module = _module(small_problem)

    assert module.network.A.dtype == torch.float32
    assert torch.equal(module.network.A, small_problem.A.to(torch.float32))


@pytest.mark.parametrize("loss", ["mse_last", "mse_all"])
def test_compute_loss(small_problem, loss):
    module = _module(small_problem, loss=loss)
    y, x = _float32(small_problem, "val")
    x_hats = module(y)

    value = module.compute_loss(x_hats, x)

    per_layer = [((x_hats[k] - x) ** 2).mean() for k in range(N_LAYERS)]
    expected = per_layer[-1] if loss == "mse_last" else torch.stack(per_layer).mean()
    torch.testing.assert_close(value, expected, rtol=1e-6, atol=0)


@pytest.mark.parametrize("network", ["lista", "lista_cp"])
def test_validation_equals_ista(small_problem, network):
    module = _module(small_problem, network=network)
    y, x = small_problem.fixed_set("val")

    metrics = _trainer().validate(module, datamodule=_data(small_problem, eval_batch_size=16), verbose=False)[0]

    for k in range(1, N_LAYERS + 1):
        expected = nmse_db(ista(small_problem.A, y, REG, max_iter=k).x, x).item()
        assert metrics[f"val/nmse_db_layer_{k:02d}"] == pytest.approx(expected, abs=1e-4), f"layer {k}"
    classical = ista(small_problem.A, y, REG, max_iter=N_LAYERS).x
    assert metrics["val/nmse_db"] == pytest.approx(nmse_db(classical, x).item(), abs=1e-4)
    assert metrics["val/nmse_db_per_sample"] == pytest.approx(nmse_db_per_sample(classical, x).item(), abs=1e-4)


def test_validation_batching_invariant(small_problem):
    module = _module(small_problem, network="alista")

    whole = _trainer().validate(module, datamodule=_data(small_problem, eval_batch_size=64), verbose=False)[0]
    uneven = _trainer().validate(module, datamodule=_data(small_problem, eval_batch_size=10), verbose=False)[0]

    assert whole.keys() == uneven.keys()
    for key, value in whole.items():
        assert uneven[key] == pytest.approx(value, abs=1e-5), key


def test_validation_logs_every_layer(small_problem):
    module = _module(small_problem, network="alista")
    y, x = _float32(small_problem, "val")

    metrics = _trainer().validate(module, datamodule=_data(small_problem), verbose=False)[0]

    layer_keys = sorted(key for key in metrics if key.startswith("val/nmse_db_layer_"))
    assert layer_keys == [f"val/nmse_db_layer_{k:02d}" for k in range(1, N_LAYERS + 1)]
    with torch.no_grad():
        x_hats = module(y)
    for k in range(N_LAYERS):
        assert metrics[layer_keys[k]] == pytest.approx(nmse_db(x_hats[k], x).item(), abs=1e-4), layer_keys[k]
    assert metrics["val/nmse_db_best"] == metrics["val/nmse_db"]


def test_test_results_per_layer(small_problem):
    module = _module(small_problem, network="alista")
    y, x = _float32(small_problem, "test")

    metrics = _trainer().test(module, datamodule=_data(small_problem, eval_batch_size=20), verbose=False)[0]

    with torch.no_grad():
        x_hats = module(y)
    aggregate = [nmse_db(x_hats[k], x).item() for k in range(N_LAYERS)]
    per_sample = [nmse_db_per_sample(x_hats[k], x).item() for k in range(N_LAYERS)]
    assert module.test_results["nmse_db"] == pytest.approx(aggregate, abs=1e-4)
    assert module.test_results["nmse_db_per_sample"] == pytest.approx(per_sample, abs=1e-4)
    assert metrics["test/nmse_db"] == pytest.approx(aggregate[-1], abs=1e-4)
    assert metrics["test/nmse_db_per_sample"] == pytest.approx(per_sample[-1], abs=1e-4)


def test_fit_schedule_and_best(small_problem):
    class RecordValidation(pl.Callback):
        def __init__(self) -> None:
            self.values: list[float] = []

        def on_validation_end(self, trainer, module) -> None:
            if not trainer.sanity_checking:
                self.values.append(trainer.callback_metrics["val/nmse_db"].item())

    pl.seed_everything(0)
    module = _module(small_problem, network="alista", lr=1e-2, lr_min_ratio=0.1)
    record = RecordValidation()
    trainer = _trainer(max_steps=4, callbacks=[record])

    trainer.fit(module, datamodule=_data(small_problem))

    scheduler = trainer.lr_scheduler_configs[0].scheduler
    assert trainer.global_step == 4
    assert scheduler.T_max == 4
    assert scheduler.eta_min == pytest.approx(1e-3)
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(1e-3)
    assert len(record.values) == 2
    assert trainer.callback_metrics["val/nmse_db_best"].item() == pytest.approx(min(record.values), abs=1e-6)


def test_training_step_nonfinite(small_problem):
    module = _module(small_problem)
    y, x = _float32(small_problem, "val")
    x[0, 0] = math.nan

    with pytest.raises(NonFiniteLossError, match=r"training loss is nan at global step 0 \(epoch 0\)"):
        module.training_step((y, x), 0)


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_validation_nonfinite_parameters(small_problem, value):
    module = _module(small_problem, network="alista")
    with torch.no_grad():
        module.network.threshold[1] = value

    with pytest.raises(NonFiniteLossError, match="at global step 0: the parameters are no longer finite"):
        _trainer().validate(module, datamodule=_data(small_problem), verbose=False)


def test_lr_schedule_invalid(small_problem):
    with pytest.raises(ValueError, match=r"lr_schedule must be one of \('cosine', 'constant'\), got 'step'"):
        _module(small_problem, lr_schedule="step")


def test_lr_schedule_constant(small_problem):
    module = _module(small_problem, network="alista", lr=1e-2, lr_schedule="constant")
    trainer = _trainer(max_steps=2)

    trainer.fit(module, datamodule=_data(small_problem))

    assert trainer.lr_scheduler_configs == []
    assert trainer.optimizers[0].param_groups[0]["lr"] == 1e-2


# Unsupervised training of Step-LISTA on the Lasso objective.
LASSO_REG = 0.1


def _slista(problem, n_layers: int = N_LAYERS, **kwargs) -> UnrolledModule:
    options = {"loss": "lasso", "lasso_reg": LASSO_REG} | kwargs
    return UnrolledModule(
        network="slista", n_layers=n_layers, problem=problem.spec(), network_kwargs={"reg": LASSO_REG}, **options
    )


def test_lasso_reg_required(small_problem):
    with pytest.raises(ValueError, match="loss='lasso' needs lasso_reg"):
        _slista(small_problem, lasso_reg=None)


@pytest.mark.parametrize("lasso_reg", [-0.1, math.nan, math.inf])
def test_lasso_reg_invalid(small_problem, lasso_reg):
    with pytest.raises(ValueError, match="lasso_reg must be a finite number >= 0"):
        _slista(small_problem, lasso_reg=lasso_reg)


def test_lasso_loss_closed_form(small_problem):
    module = _slista(small_problem)
    y, _ = _float32(small_problem, "val")
    A = module.network.A
    with torch.no_grad():
        x_hats = module(y)

    value = module.compute_loss(x_hats, None, y)

    x_last = x_hats[-1]
    by_hand = (0.5 * ((x_last @ A.T - y) ** 2).sum(-1) + LASSO_REG * x_last.abs().sum(-1)).mean()
    reference = lasso_objective(x_last.double(), y.double(), A.double(), LASSO_REG).mean()
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, by_hand, rtol=1e-6, atol=0)
    assert value.item() == pytest.approx(reference.item(), rel=1e-5)


def test_lasso_objective_dtype_none_keeps_float64_values():
    generator = torch.Generator().manual_seed(0)
    A = torch.randn(6, 10, generator=generator, dtype=torch.float64)
    x = torch.randn(4, 10, generator=generator, dtype=torch.float64)
    y = torch.randn(4, 6, generator=generator, dtype=torch.float64)

    in_input_dtype = lasso_objective(x, y, A, LASSO_REG, dtype=None)

    assert torch.equal(in_input_dtype, lasso_objective(x, y, A, LASSO_REG))
    assert lasso_objective(x.float(), y.float(), A.float(), LASSO_REG, dtype=None).dtype == torch.float32


def test_lasso_loss_gradcheck():
    problem = SparseCoding(m=6, n=10, n_val=4, n_test=4)
    module = _slista(problem, n_layers=3).double()
    y, _ = problem.fixed_set("val")
    # Steps from 0.9/L to 1.7/L, inside ISTA's range (0, 2/L). With random data no entry lands exactly on a
    # threshold, where the loss has a kink.
    step_size = (module.network.step_size.detach() * torch.tensor([0.9, 1.3, 1.7], dtype=torch.float64)).requires_grad_()
    y = y.clone().requires_grad_()

    def loss(step_size: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x_hats = torch.func.functional_call(module.network, {"step_size": step_size}, (y,))
        return module.compute_loss(x_hats, None, y)

    assert torch.autograd.gradcheck(loss, (step_size, y))


def test_validation_logs_lasso_objective(small_problem):
    module = _slista(small_problem)
    y, _ = _float32(small_problem, "val")

    whole = _trainer().validate(module, datamodule=_data(small_problem, eval_batch_size=64), verbose=False)[0]
    uneven = _trainer().validate(module, datamodule=_data(small_problem, eval_batch_size=10), verbose=False)[0]

    with torch.no_grad():
        expected = module.lasso(module(y)[-1], y, torch.float64).mean().item()
    assert whole["val/lasso_objective"] == pytest.approx(expected, rel=1e-6)
    assert uneven["val/lasso_objective"] == pytest.approx(expected, rel=1e-6)


def test_supervised_module_logs_no_lasso_objective(small_problem):
    metrics = _trainer().validate(_module(small_problem), datamodule=_data(small_problem), verbose=False)[0]

    assert "val/lasso_objective" not in metrics


def test_slista_unsupervised_beats_ista():
    # Measured (1 thread): the validation objective after 200 steps is 0.354, against 0.420 for 5 ISTA
    # iterations at 1/L (the untrained network) and 0.281 at convergence.
    problem = SparseCoding(m=20, n=40, n_val=64, n_test=64)
    n_layers = 5
    pl.seed_everything(0)
    module = _slista(problem, n_layers=n_layers, lr=1e-2)
    y, _ = problem.fixed_set("val")
    ista_objective = lasso_objective(ista(problem.A, y, LASSO_REG, max_iter=n_layers).x, y, problem.A, LASSO_REG).mean().item()
    with torch.no_grad():
        untrained = module.lasso(module(y.to(torch.float32))[-1], y.to(torch.float32), torch.float64).mean().item()
    trainer = _trainer(max_steps=200)

    trainer.fit(module, datamodule=ProblemDataModule(problem, batch_size=64, steps_per_epoch=10, eval_batch_size=64))

    trained = trainer.callback_metrics["val/lasso_objective"].item()
    assert untrained == pytest.approx(ista_objective, rel=1e-5)
    assert "train/lasso_objective" in trainer.callback_metrics
    assert trained < ista_objective - 0.03, f"trained {trained:.4f}, ISTA {ista_objective:.4f}"
