"""Hydra configs: every experiment and group option composes, resolves and builds, and a model sweep expands."""

from __future__ import annotations

import inspect
import itertools
from pathlib import Path

import pytest
import pytorch_lightning as pl
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import instantiate
from omegaconf import OmegaConf
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint, TQDMProgressBar
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.strategies import DDPStrategy

from models import NETWORKS
from models.imaging import IMAGING_NETWORKS
from models.imaging_training import build_imaging_module
from models.layerwise import LayerwiseTraining
from models.module import LOSSES, UnrolledModule
from models.trainer import build_trainer
from models.training import build_module, build_protocol_callbacks, protocol_name
from models.variance_reduced import STOCHASTIC_NETWORKS, VarianceReducedModule
from models.variance_reduced_training import build_variance_reduced_module
from unrolled.problems import PROBLEMS, build_problem
from unrolled.problems.imaging_tasks import IMAGING_TASKS, build_imaging_task
from unrolled.problems.instance_family import FAMILIES, build_family

pytestmark = pytest.mark.usefixtures("zoo_checkpoints")

CONFIG_DIR = Path(__file__).resolve().parents[1] / "conf"
EXPERIMENTS = sorted(path.stem for path in (CONFIG_DIR / "experiment").glob("*.yaml"))


def _options(group: str) -> list[str]:
    return sorted(path.stem for path in (CONFIG_DIR / group).glob("*.yaml"))


def _job_config(cfg) -> dict:
    """The resolved config without the groups that need a Hydra runtime, as train.py passes it on."""
    config = OmegaConf.to_container(cfg, resolve=False)
    for key in ("hydra", "callbacks", "logger"):
        config.pop(key, None)
    return OmegaConf.to_container(OmegaConf.create(config), resolve=True)


# Key values of the experiments behind the shipped checkpoints, by dotted config key.
SHIPPED = {
    "alista_noiseless": {"model.name": "alista", "problem.name": "sparse_coding", "problem.snr_db": None, "model.optim.lr": 1e-3},
    "alista_snr40": {"model.name": "alista", "problem.name": "sparse_coding", "problem.snr_db": 40, "model.optim.lr": 1e-3},
    "lista_cp_noiseless": {
        "model.name": "lista_cp",
        "problem.name": "sparse_coding",
        "problem.snr_db": None,
        "model.optim.lr": 5e-4,
    },
    "lista_cp_snr40": {"model.name": "lista_cp", "problem.name": "sparse_coding", "problem.snr_db": 40, "model.optim.lr": 5e-4},
    "lista_cp_patches": {"model.name": "lista_cp", "problem.name": "image_patches", "problem.m": 128, "model.kwargs.reg": 0.01},
    "zoo": {"model.name": "alista", "problem.name": "sparse_coding", "problem.snr_db": None, "model.n_layers": 16},
}
PUBLISHED_AS = {
    "alista_noiseless": "alista.sc250x500_noiseless",
    "alista_snr40": "alista.sc250x500_snr40",
    "lista_cp_noiseless": "lista_cp.sc250x500_noiseless",
    "lista_cp_snr40": "lista_cp.sc250x500_snr40",
    "lista_cp_patches": "lista_cp.patches16_cs128",
    "zoo": "alista.sc250x500_noiseless",
}


def test_defaults(compose_train):
    cfg = compose_train([])

    assert cfg.model.name == "alista"
    assert cfg.problem.name == "sparse_coding"
    assert cfg.problem.m == 250
    assert cfg.problem.n == 500
    assert cfg.trainer.accelerator == "auto"
    assert cfg.seed == 0
    assert cfg.resume is False
    assert cfg.publish_as is None
    assert cfg.protocol.name == "end_to_end"
    assert cfg.run_name == "alista_16_sparse_coding"
    assert cfg.hydra.job.chdir is False
    assert cfg.hydra.run.dir.startswith("outputs/train/alista_16_sparse_coding/")


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes(compose_train, experiment):
    cfg = compose_train([f"experiment={experiment}"])
    config = _job_config(cfg)

    if config["problem"]["name"] in FAMILIES:
        assert config["model"]["name"] in STOCHASTIC_NETWORKS
        assert config["monitor"] == "val/log10_subopt"
    elif config["problem"]["name"] in IMAGING_TASKS:
        assert config["model"]["name"] in IMAGING_NETWORKS
        assert config["monitor"] == "val/mse"
    else:
        assert config["model"]["name"] in NETWORKS
        assert config["problem"]["name"] in PROBLEMS
        assert config["monitor"] == "val/nmse_db"
    assert f"{config['model']['name']}_{config['model']['n_layers']}" in config["run_name"]
    assert isinstance(config["trainer"]["max_steps"], int)
    assert config["trainer"]["max_steps"] >= config["data"]["steps_per_epoch"]
    assert cfg.hydra.runtime.choices["model"] == config["model"]["name"]


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_publish_name(compose_train, experiment):
    config = _job_config(compose_train([f"experiment={experiment}"]))

    assert config["publish_as"] == PUBLISHED_AS.get(experiment)


SETTINGS = _options("setting")


@pytest.mark.parametrize("setting", SETTINGS)
def test_zoo_setting_names_checkpoint(compose_train, setting):
    config = _job_config(compose_train(["experiment=zoo", "model=lista_cpss", f"setting={setting}"]))
    problem = build_problem(config["problem"])

    assert config["publish_as"] == f"lista_cpss.{setting}"
    assert config["run_name"] == f"lista_cpss_16_{setting}"
    size, variant = setting.split("_", 1)
    assert size == f"sc{problem.m}x{problem.n}"
    assert problem.snr_db == (float(variant.removeprefix("snr")) if variant.startswith("snr") else None)
    assert problem.condition_number == (float(variant.removeprefix("kappa")) if variant.startswith("kappa") else None)


def test_shipped_names_match_experiments():
    assert set(PUBLISHED_AS) <= set(EXPERIMENTS)
    assert set(SHIPPED) == set(PUBLISHED_AS)


@pytest.mark.parametrize("experiment", sorted(SHIPPED))
def test_experiment_values(compose_train, experiment):
    config = OmegaConf.create(_job_config(compose_train([f"experiment={experiment}"])))

    assert config.model.n_layers == 16
    assert config.run_name == f"{config.model.name}_16_{PUBLISHED_AS[experiment].split('.', 1)[1]}"
    for key, value in SHIPPED[experiment].items():
        assert OmegaConf.select(config, key) == value, key


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_builds_module(compose_train, experiment):
    config = _job_config(compose_train([f"experiment={experiment}"]))

    if config["problem"]["name"] in FAMILIES:
        module = build_variance_reduced_module(config)
        assert isinstance(module.network, STOCHASTIC_NETWORKS[config["model"]["name"]])
        assert module.family.spec() == config["problem"]
    elif config["problem"]["name"] in IMAGING_TASKS:
        module = build_imaging_module(config)
        assert isinstance(module.network, IMAGING_NETWORKS[config["model"]["name"]])
        assert module.task.spec() == config["problem"]
    else:
        module = build_module(config)
        assert isinstance(module.network, NETWORKS[config["model"]["name"]])
        assert module.problem.spec() == config["problem"]
    assert module.network.n_layers == config["model"]["n_layers"]


@pytest.mark.parametrize("model", sorted(STOCHASTIC_NETWORKS))
def test_stochastic_model_option(compose_train, model):
    config = _job_config(compose_train([f"model={model}", "problem=breast_cancer_subsets"]))

    assert set(config["model"]["kwargs"]) <= set(inspect.signature(STOCHASTIC_NETWORKS[model]).parameters)
    assert set(config["model"]["optim"]) <= set(inspect.signature(VarianceReducedModule).parameters)
    module = build_variance_reduced_module(config)
    assert isinstance(module.network, STOCHASTIC_NETWORKS[model])
    assert module.network.n_layers == config["model"]["n_layers"]


@pytest.mark.parametrize("model", sorted(NETWORKS))
def test_model_option(compose_train, model):
    config = _job_config(compose_train([f"model={model}"]))
    network_parameters = inspect.signature(NETWORKS[model]).parameters
    module_parameters = inspect.signature(UnrolledModule).parameters

    assert config["model"]["name"] == model
    assert config["model"]["loss"] in LOSSES
    assert set(config["model"]["kwargs"]) <= set(network_parameters)
    assert set(config["model"]["optim"]) <= set(module_parameters)
    module = build_module(config)
    assert isinstance(module.network, NETWORKS[model])
    assert module.network.n_layers == config["model"]["n_layers"]


def test_slista_option_lasso(compose_train):
    config = _job_config(compose_train(["model=slista", "model.kwargs.reg=0.05"]))

    module = build_module(config)

    assert config["model"]["loss"] == "lasso"
    assert module.hparams.lasso_reg == 0.05
    assert module.network.reg == 0.05


def test_model_options_cover_registry():
    assert _options("model") == sorted([*NETWORKS, *STOCHASTIC_NETWORKS, *IMAGING_NETWORKS])


@pytest.mark.parametrize("problem", _options("problem"))
def test_problem_option(compose_train, problem):
    config = _job_config(compose_train([f"problem={problem}"]))

    name = config["problem"]["name"]
    rebuild = build_problem
    if name in FAMILIES:
        rebuild = build_family
    elif name in IMAGING_TASKS:
        rebuild = build_imaging_task
    rebuilt = rebuild(config["problem"])

    assert rebuilt.spec() == config["problem"]


@pytest.mark.parametrize(("trainer", "accelerator"), [("default", "auto"), ("cpu", "cpu"), ("gpu", "gpu")])
def test_trainer_option(compose_train, trainer, accelerator):
    config = _job_config(compose_train([f"trainer={trainer}"]))

    assert config["trainer"]["accelerator"] == accelerator
    assert set(config["trainer"]) <= set(inspect.signature(pl.Trainer).parameters)


def test_trainer_options_listed():
    assert _options("trainer") == ["cpu", "ddp", "default", "gpu"]


@pytest.mark.parametrize("value", ["maybe", "no", 1])
def test_compile_must_be_boolean(compose_train, value):
    config = _job_config(compose_train([f"compile={value}"]))

    with pytest.raises(ValueError, match=f"compile must be true or false, got {value!r}"):
        build_module(config)


def test_trainer_precision_overridable(compose_train):
    config = _job_config(compose_train(["trainer.precision=bf16-mixed"]))

    assert config["trainer"]["precision"] == "bf16-mixed"


def test_trainer_ddp_builds_ddp_strategy(compose_train, tmp_path):
    config = _job_config(compose_train(["trainer=ddp", "trainer.accelerator=cpu", "trainer.num_nodes=1"]))

    trainer = build_trainer(config["trainer"], tmp_path, [], [])

    assert isinstance(trainer.strategy, DDPStrategy)
    assert trainer.world_size == 2


def test_callbacks_instantiate(compose_train, tmp_path):
    cfg = compose_train([], run_dir=tmp_path)

    callbacks = {name: instantiate(node) for name, node in cfg.callbacks.items()}

    assert isinstance(callbacks["model_checkpoint"], ModelCheckpoint)
    assert isinstance(callbacks["lr_monitor"], LearningRateMonitor)
    assert isinstance(callbacks["progress_bar"], TQDMProgressBar)
    assert callbacks["model_checkpoint"].dirpath == str(tmp_path / "checkpoints")
    assert callbacks["model_checkpoint"].monitor == "val/nmse_db"
    assert callbacks["model_checkpoint"].save_last is False
    assert isinstance(callbacks["last_checkpoint"], ModelCheckpoint)
    assert callbacks["last_checkpoint"].dirpath == str(tmp_path / "checkpoints")
    assert callbacks["last_checkpoint"].monitor is None
    assert callbacks["last_checkpoint"].filename == "last"


def test_logger_csv_instantiates(compose_train, tmp_path):
    cfg = compose_train(["logger=csv"], run_dir=tmp_path)

    logger = instantiate(cfg.logger.csv)

    assert isinstance(logger, CSVLogger)
    assert Path(logger.save_dir) == tmp_path


def test_logger_none_empty(compose_train, tmp_path):
    cfg = compose_train(["logger=none"], run_dir=tmp_path)

    assert len(cfg.logger) == 0


def test_logger_options_listed():
    assert _options("logger") == ["csv", "none"]


def test_protocol_options_listed():
    assert _options("protocol") == ["end_to_end", "layerwise"]


def test_protocol_end_to_end(compose_train):
    config = _job_config(compose_train(["protocol=end_to_end"]))

    assert build_protocol_callbacks(config) == []
    assert build_module(config).hparams.lr_schedule == "cosine"
    assert config == _job_config(compose_train([]))


@pytest.mark.parametrize("model", ["alista", "lista_cpss", "tilista"])
def test_protocol_layerwise(compose_train, model):
    config = _job_config(compose_train(["protocol=layerwise", f"model={model}", "model.n_layers=8"]))

    (callback,) = build_protocol_callbacks(config)
    module = build_module(config)

    assert isinstance(callback, LayerwiseTraining)
    assert callback.lr == 5e-4
    assert callback.lr_factors == (1.0, 0.2, 0.02)
    assert callback.n_layers == 8
    assert module.hparams.lr_schedule == "constant"
    assert config["data"]["steps_per_epoch"] == 100
    assert config["trainer"]["max_steps"] == 200000


def test_protocol_layerwise_command_line_wins(compose_train):
    config = _job_config(compose_train(["protocol=layerwise", "data.steps_per_epoch=50", "trainer.max_steps=1000"]))

    assert config["data"]["steps_per_epoch"] == 50
    assert config["trainer"]["max_steps"] == 1000


def test_protocol_unknown_rejected():
    with pytest.raises(ValueError, match=r"protocol.name must be one of \('end_to_end', 'layerwise'\), got 'greedy'"):
        protocol_name({"protocol": {"name": "greedy"}})


def test_slista_unsupervised_monitors_objective(compose_train, tmp_path):
    cfg = compose_train(["experiment=slista_unsupervised"], run_dir=tmp_path)

    checkpoint = instantiate(cfg.callbacks.model_checkpoint)

    assert cfg.model.name == "slista"
    assert cfg.model.loss == "lasso"
    assert cfg.model.lasso_reg == cfg.model.kwargs.reg
    assert checkpoint.monitor == "val/lasso_objective"
    assert checkpoint.mode == "min"


def test_sweep_composes(compose_train):
    parsed = OverridesParser.create().parse_overrides(["model=lista,lista_cp,alista", "model.n_layers=4,8,16"])
    sweeps = [[f"{override.key_or_group}={value}" for value in override.sweep_string_iterator()] for override in parsed]
    # Hydra's basic sweeper runs the cartesian product of the swept values, first override outermost.

    runs = [_job_config(compose_train(list(combination))) for combination in itertools.product(*sweeps)]

    assert len(runs) == 9
    assert [(run["model"]["name"], run["model"]["n_layers"]) for run in runs] == list(
        itertools.product(["lista", "lista_cp", "alista"], [4, 8, 16])
    )
    assert len({run["run_name"] for run in runs}) == 9
    assert runs[0]["model"]["optim"]["lr"] == 5e-4
    assert runs[-1]["model"]["optim"]["lr"] == 1e-3
