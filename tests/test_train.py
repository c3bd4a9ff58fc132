"""train.py end to end: outputs of a run, model card metrics, resume, non-finite losses, checkpoint loading."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torch.serialization
from omegaconf import OmegaConf

from models import list_pretrained, load_pretrained, load_run
from models.hub import CARD_FILE, WEIGHTS_FILE, sha256_file
from models.module import NonFiniteLossError, UnrolledModule
from models.training import RUN_CONFIG_FILE, load_initial_weights, record_or_check_run_config, resume_command, train_from_config
from unrolled.metrics import nmse_db, nmse_db_per_sample
from unrolled.problems import SparseCoding, build_problem

pytestmark = pytest.mark.usefixtures("zoo_checkpoints")

REPO_ROOT = Path(__file__).resolve().parents[1]
N_LAYERS = 3
MAX_STEPS = 4
STEPS_PER_EPOCH = 2
NAN_STEP = 3
# Two epochs of two steps on a 50 x 100 problem with 64 validation and 64 test samples.
SMALL_RUN = [
    "problem.m=50",
    "problem.n=100",
    "problem.n_val=64",
    "problem.n_test=64",
    f"model.n_layers={N_LAYERS}",
    f"trainer.max_steps={MAX_STEPS}",
    "trainer.log_every_n_steps=1",
    "data.batch_size=16",
    f"data.steps_per_epoch={STEPS_PER_EPOCH}",
]
PLAIN_TYPES = {dict, list, str, int, float, bool, type(None)}
SCRIPT_TIMEOUT_S = 900
# Expected on resume: the run folder already contains checkpoints, and Lightning (2.6) replays the end
# of the interrupted epoch without validation metrics before it starts the next one.
IGNORE_EXISTING_CHECKPOINTS = pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")
IGNORE_MISSING_MONITOR = pytest.mark.filterwarnings("ignore:.*could not find the monitored key in the returned metrics")


class InjectNaN(pl.Callback):
    """Set every parameter to NaN before the training batch of global step ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            with torch.no_grad():
                for parameter in module.parameters():
                    parameter.fill_(float("nan"))


class StopAfterFirstEpoch(pl.Callback):
    """End fit after epoch 0, as a killed process would, leaving last.ckpt as written at that epoch's end."""

    def on_train_epoch_end(self, trainer, module) -> None:
        trainer.should_stop = True


class StopAfterEpoch(pl.Callback):
    """End fit after epoch ``epoch`` (from 0), as a killed process would."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_end(self, trainer, module) -> None:
        if trainer.current_epoch == self.epoch:
            trainer.should_stop = True


@dataclass
class ScriptRun:
    """A train.py subprocess whose output goes to files, so several can run at once without filling a pipe."""

    run_dir: Path
    process: subprocess.Popen
    stdout_path: Path
    stderr_path: Path

    def wait(self) -> subprocess.CompletedProcess:
        self.process.wait(timeout=SCRIPT_TIMEOUT_S)
        return subprocess.CompletedProcess(
            self.process.args, self.process.returncode, self.stdout_path.read_text(), self.stderr_path.read_text()
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=60)


def _start_script(run_dir: Path, overrides: list[str], env: dict[str, str], multirun: bool = False) -> ScriptRun:
    folder_override = f"hydra.sweep.dir={run_dir}" if multirun else f"hydra.run.dir={run_dir}"
    command = [sys.executable, "train.py", *(["-m"] if multirun else []), *SMALL_RUN, "trainer=cpu", *overrides, folder_override]
    stdout_path = run_dir.parent / f"{run_dir.name}.stdout"
    stderr_path = run_dir.parent / f"{run_dir.name}.stderr"
    with open(stdout_path, "w") as stdout, open(stderr_path, "w") as stderr:
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=os.environ | env, stdout=stdout, stderr=stderr, text=True)
    return ScriptRun(run_dir, process, stdout_path, stderr_path)


def _train_in_process(compose_train, run_dir: Path, overrides: list[str] = (), extra_callbacks: list[pl.Callback] = ()) -> dict:
    """Do what train.py's main does, in this process: compose the config and train."""
    all_overrides = [*SMALL_RUN, "+trainer.enable_progress_bar=false", "~callbacks.progress_bar", *overrides]
    if not any(override.startswith("trainer=") for override in overrides):
        all_overrides.append("trainer=cpu")
    return train_from_config(compose_train(all_overrides, run_dir=run_dir), run_dir, extra_callbacks)


def _types_in(value) -> set[type]:
    """Types of ``value`` and of everything nested in its dicts and lists (dict keys included)."""
    found = {type(value)}
    if isinstance(value, dict):
        for key, item in value.items():
            found |= _types_in(key) | _types_in(item)
    elif isinstance(value, list):
        for item in value:
            found |= _types_in(item)
    return found


def _network_state(checkpoint: dict) -> dict[str, torch.Tensor]:
    return {key.removeprefix("network."): value for key, value in checkpoint["state_dict"].items() if key.startswith("network.")}


@pytest.fixture(scope="module")
def script_runs(tmp_path_factory) -> dict[str, ScriptRun]:
    """Start this module's two train.py runs together: a normal one published as alista.small, one that hits NaN.

    The NaN run gets :class:`InjectNaN` as a Hydra callback, imported from a copy of its source
    on PYTHONPATH.
    """
    folder = tmp_path_factory.mktemp("scripts")
    published = folder / "published"
    (folder / "nan_injection.py").write_text("import pytorch_lightning as pl\nimport torch\n\n\n" + inspect.getsource(InjectNaN))
    python_path = os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")]))
    nan_overrides = ["+callbacks.inject_nan._target_=nan_injection.InjectNaN", f"+callbacks.inject_nan.step={NAN_STEP}"]
    runs = {
        "normal": _start_script(folder / "normal", ["publish_as=alista.small"], {"UNROLLED_ZOO_CHECKPOINTS": str(published)}),
        "nan": _start_script(
            folder / "nan", nan_overrides, {"PYTHONPATH": python_path, "UNROLLED_ZOO_CHECKPOINTS": str(published)}
        ),
    }
    yield runs
    for run in runs.values():
        run.stop()


@pytest.fixture(scope="module")
def script_run(script_runs) -> tuple[Path, Path, subprocess.CompletedProcess]:
    """The normal train.py run: (run folder, checkpoints folder it published to, completed process)."""
    run = script_runs["normal"]
    return run.run_dir, run.run_dir.parent / "published", run.wait()


@pytest.fixture(scope="module")
def script_card(script_run) -> dict:
    run_dir, _, result = script_run
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((run_dir / CARD_FILE).read_text())


def test_script_exit_zero(script_run):
    run_dir, _, result = script_run

    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Run folder: {run_dir}" in result.stdout


def test_script_writes_run_files(script_run, script_card):
    run_dir, _, _ = script_run

    for relative in ("checkpoints/last.ckpt", WEIGHTS_FILE, CARD_FILE, ".hydra/config.yaml", "logs/version_0/metrics.csv"):
        assert (run_dir / relative).is_file(), relative
    assert not list(run_dir.rglob("*.tmp"))


def test_script_card_sha256(script_run, script_card):
    run_dir, _, _ = script_run

    assert script_card["sha256"] == sha256_file(run_dir / WEIGHTS_FILE)


def test_script_card_metrics_fresh(script_run, script_card):
    loaded = load_run(script_run[0])
    y, x = loaded.problem.fixed_set("test")

    with torch.no_grad():
        x_hats = loaded.network(y.to(torch.float32))

    per_layer = script_card["test_metrics"]["per_layer"]
    assert script_card["test_metrics"]["n_samples"] == 64
    assert len(per_layer["nmse_db"]) == N_LAYERS
    assert len(per_layer["nmse_db_per_sample"]) == N_LAYERS
    for k in range(N_LAYERS):
        assert per_layer["nmse_db"][k] == pytest.approx(nmse_db(x_hats[k], x).item(), abs=1e-4), f"layer {k + 1}"
        assert per_layer["nmse_db_per_sample"][k] == pytest.approx(nmse_db_per_sample(x_hats[k], x).item(), abs=1e-4), (
            f"layer {k + 1}"
        )


def test_script_card_problem_regenerates(script_card):
    y, x = build_problem(script_card["problem"]).fixed_set("test")

    y_expected, x_expected = SparseCoding(m=50, n=100, n_val=64, n_test=64).fixed_set("test")
    assert script_card["problem"] == script_card["config"]["problem"]
    assert torch.equal(y, y_expected)
    assert torch.equal(x, x_expected)


def test_script_card_training_record(script_card):
    training = script_card["training"]

    assert training["global_steps"] == MAX_STEPS
    assert training["resumed_from"] is None
    assert training["accelerator"] == "CPUAccelerator"
    assert training["best_checkpoint"] in ("epoch000.ckpt", "epoch001.ckpt")
    assert script_card["config"]["trainer"]["max_steps"] == MAX_STEPS
    assert script_card["network"] == "alista"
    assert script_card["n_layers"] == N_LAYERS


def test_script_exports_best_checkpoint(script_run, script_card):
    run_dir, _, _ = script_run
    best = torch.load(run_dir / "checkpoints" / script_card["training"]["best_checkpoint"], weights_only=True)

    exported = load_run(run_dir).network.state_dict()

    for key, value in _network_state(best).items():
        assert torch.equal(exported[key], value), key


def test_script_publish(script_run, monkeypatch):
    run_dir, published, _ = script_run
    monkeypatch.setenv("UNROLLED_ZOO_CHECKPOINTS", str(published))

    loaded = load_pretrained("alista.small")

    assert list_pretrained() == ["alista.small"]
    assert loaded.card["weights_file"] == "alista.small.safetensors"
    for key, value in load_run(run_dir).network.state_dict().items():
        assert torch.equal(loaded.network.state_dict()[key], value), key


def test_ckpt_weights_only(script_run, script_card):
    checkpoint = torch.load(script_run[0] / "checkpoints" / "last.ckpt", weights_only=True)

    hyper_parameters = checkpoint["hyper_parameters"]
    assert _types_in(hyper_parameters) <= PLAIN_TYPES
    assert hyper_parameters["problem"] == script_card["problem"]
    assert hyper_parameters["network_kwargs"] == script_card["network_kwargs"]
    assert checkpoint["global_step"] == MAX_STEPS


def test_ckpt_load_from_checkpoint(script_run):
    path = script_run[0] / "checkpoints" / "last.ckpt"

    module = UnrolledModule.load_from_checkpoint(path, map_location="cpu", weights_only=True)

    checkpoint = torch.load(path, weights_only=True)
    for key, value in _network_state(checkpoint).items():
        assert torch.equal(module.network.state_dict()[key], value), key


def test_ckpt_other_device_map_location(script_run, tmp_path, monkeypatch):
    checkpoint = torch.load(script_run[0] / "checkpoints" / "last.ckpt", weights_only=True)
    moved = tmp_path / "saved_on_cuda.ckpt"
    # Tag every storage as "cuda:0" while saving, which is what torch.save writes for tensors on a GPU.
    with monkeypatch.context() as patch:
        patch.setattr(torch.serialization, "_package_registry", list(torch.serialization._package_registry))
        torch.serialization.register_package(0, lambda storage: "cuda:0", lambda storage, location: None)
        torch.save(checkpoint, moved)

    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="Attempting to deserialize object on a CUDA device"):
            torch.load(moved, weights_only=True)
    loaded = torch.load(moved, weights_only=True, map_location="cpu")
    module = UnrolledModule.load_from_checkpoint(moved, map_location="cpu", weights_only=True)

    for key, value in checkpoint["state_dict"].items():
        assert loaded["state_dict"][key].device.type == "cpu", key
        assert torch.equal(loaded["state_dict"][key], value), key
    for key, value in _network_state(checkpoint).items():
        assert torch.equal(module.network.state_dict()[key], value), key


@IGNORE_MISSING_MONITOR
def test_last_ckpt_written_without_improvement(compose_train, tmp_path):
    # At this rate no parameter changes in float32, so validation never improves after epoch 0.
    _train_in_process(compose_train, tmp_path, ["logger=none", "model.optim.lr=1e-30"])

    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    best = sorted((tmp_path / "checkpoints").glob("epoch*.ckpt"))

    assert last["global_step"] == MAX_STEPS
    assert [path.name for path in best] == ["epoch000.ckpt"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_ckpt_loads_on_cpu(compose_train, tmp_path):
    _train_in_process(compose_train, tmp_path, ["trainer=gpu", "logger=none"])
    path = tmp_path / "checkpoints" / "last.ckpt"

    on_gpu = torch.load(path, weights_only=True)
    on_cpu = torch.load(path, weights_only=True, map_location="cpu")
    module = UnrolledModule.load_from_checkpoint(path, map_location="cpu", weights_only=True)

    for key, value in on_gpu["state_dict"].items():
        assert value.device.type == "cuda", key
        assert on_cpu["state_dict"][key].device.type == "cpu", key
        assert torch.equal(on_cpu["state_dict"][key], value.cpu()), key
    assert module.device.type == "cpu"
    assert load_run(tmp_path).network.A.device.type == "cpu"


@IGNORE_EXISTING_CHECKPOINTS
@IGNORE_MISSING_MONITOR
def test_resume_matches_straight_run(compose_train, tmp_path):
    straight = tmp_path / "straight"
    resumed = tmp_path / "resumed"
    _train_in_process(compose_train, straight, ["logger=none"])
    _train_in_process(compose_train, resumed, ["logger=none"], extra_callbacks=[StopAfterFirstEpoch()])
    first_part = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)

    _train_in_process(compose_train, resumed, ["logger=none", "resume=true"])

    expected = torch.load(straight / "checkpoints" / "last.ckpt", weights_only=True)
    actual = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)
    assert first_part["global_step"] == STEPS_PER_EPOCH
    assert expected["global_step"] == MAX_STEPS
    assert actual["global_step"] == MAX_STEPS
    for key, value in expected["state_dict"].items():
        assert torch.equal(actual["state_dict"][key], value), key
    for key, value in expected["optimizer_states"][0]["state"].items():
        assert torch.equal(actual["optimizer_states"][0]["state"][key]["exp_avg"], value["exp_avg"]), key
    assert actual["lr_schedulers"] == expected["lr_schedulers"]


@IGNORE_EXISTING_CHECKPOINTS
@IGNORE_MISSING_MONITOR
def test_resume_card_records_checkpoint(compose_train, tmp_path):
    _train_in_process(compose_train, tmp_path, extra_callbacks=[StopAfterFirstEpoch()])

    _train_in_process(compose_train, tmp_path, ["resume=true"])

    card = json.loads((tmp_path / CARD_FILE).read_text())
    assert card["training"]["resumed_from"] == str(tmp_path / "checkpoints" / "last.ckpt")
    assert card["training"]["global_steps"] == MAX_STEPS
    assert (tmp_path / "logs" / "version_1" / "metrics.csv").is_file()


def test_resume_without_checkpoint(compose_train, tmp_path):
    with pytest.raises(FileNotFoundError, match="resume=true but .*last.ckpt does not exist"):
        _train_in_process(compose_train, tmp_path, ["logger=none", "resume=true"])


def test_logger_none_runs(compose_train, tmp_path):
    result = _train_in_process(compose_train, tmp_path, ["logger=none"])

    assert (tmp_path / CARD_FILE).is_file()
    assert not (tmp_path / "logs").exists()
    assert result["card_path"] == str(tmp_path / CARD_FILE)


def test_nonfinite_lr_stops(compose_train, tmp_path):
    with pytest.raises(NonFiniteLossError, match=r"training loss is (nan|inf) at global step 1 \(epoch 0\)"):
        _train_in_process(compose_train, tmp_path, ["logger=none", "model.optim.lr=1e30"])

    assert not (tmp_path / "checkpoints").exists()
    assert not (tmp_path / CARD_FILE).exists()


def test_nonfinite_keeps_last_checkpoint(compose_train, tmp_path):
    with pytest.raises(NonFiniteLossError, match=rf"training loss is nan at global step {NAN_STEP} \(epoch 1\)"):
        _train_in_process(compose_train, tmp_path, ["logger=none"], extra_callbacks=[InjectNaN(step=NAN_STEP)])

    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == STEPS_PER_EPOCH
    for key, value in checkpoint["state_dict"].items():
        assert torch.isfinite(value).all(), key
    assert not (tmp_path / CARD_FILE).exists()


def test_script_nonfinite_exit(script_runs):
    run_dir = script_runs["nan"].run_dir
    message = f"training loss is nan at global step {NAN_STEP} (epoch 1)"

    result = script_runs["nan"].wait()

    assert result.returncode == 1, result.stderr[-3000:]
    # Hydra's default job logging writes records to stdout and to <run dir>/train.log.
    assert message in result.stdout
    assert message in (run_dir / "train.log").read_text()
    assert "Run folder:" not in result.stdout
    assert not (run_dir / CARD_FILE).exists()


def test_script_nonfinite_keeps_checkpoint(script_runs):
    assert script_runs["nan"].wait().returncode == 1
    path = script_runs["nan"].run_dir / "checkpoints" / "last.ckpt"

    checkpoint = torch.load(path, weights_only=True)
    module = UnrolledModule.load_from_checkpoint(path, map_location="cpu", weights_only=True)

    assert checkpoint["global_step"] == STEPS_PER_EPOCH
    for key, value in checkpoint["state_dict"].items():
        assert torch.isfinite(value).all(), key
    assert module.network.n_layers == N_LAYERS


@pytest.mark.slow
def test_script_multirun(tmp_path):
    sweep_dir = tmp_path / "sweep"
    overrides = ["model=lista,alista", f"trainer.max_steps={STEPS_PER_EPOCH}"]

    result = _start_script(sweep_dir, overrides, {}, multirun=True).wait()

    assert result.returncode == 0, result.stderr[-3000:]
    runs = sorted(path.name for path in sweep_dir.iterdir() if path.is_dir())
    assert runs == [f"0_lista_{N_LAYERS}_sparse_coding", f"1_alista_{N_LAYERS}_sparse_coding"]
    for run, network in zip(runs, ["lista", "alista"], strict=True):
        card = json.loads((sweep_dir / run / CARD_FILE).read_text())
        assert card["network"] == network, run
        assert (sweep_dir / run / "checkpoints" / "last.ckpt").is_file(), run


def test_init_from_run_folder(script_run, script_card, compose_train, tmp_path):
    run_dir, _, _ = script_run
    cfg = compose_train([*SMALL_RUN, "trainer=cpu"], run_dir=tmp_path)
    module = UnrolledModule(
        network=cfg.model.name,
        n_layers=cfg.model.n_layers,
        problem=OmegaConf.to_container(cfg.problem),
        network_kwargs=OmegaConf.to_container(cfg.model.kwargs),
    )

    provenance = load_initial_weights(module, str(run_dir))

    source = load_run(run_dir).network.state_dict()
    for key, value in module.network.state_dict().items():
        assert torch.equal(value, source[key]), key
    assert provenance["training"] == script_card["training"]


def test_init_from_other_problem_rejected(script_run, compose_train, tmp_path):
    run_dir, _, _ = script_run
    cfg = compose_train([*SMALL_RUN, "trainer=cpu", "problem.operator_seed=7"], run_dir=tmp_path)
    module = UnrolledModule(
        network=cfg.model.name,
        n_layers=cfg.model.n_layers,
        problem=OmegaConf.to_container(cfg.problem),
        network_kwargs=OmegaConf.to_container(cfg.model.kwargs),
    )

    with pytest.raises(ValueError, match="start from a run of the same network and problem"):
        load_initial_weights(module, str(run_dir))


def test_resume_with_other_config_rejected(compose_train, tmp_path):
    _train_in_process(compose_train, tmp_path, ["logger=none"])

    with pytest.raises(ValueError, match=r"trainer.max_steps: run started with \d+, got 99999"):
        _train_in_process(compose_train, tmp_path, ["logger=none", "resume=true", "trainer.max_steps=99999"])


def test_resume_command_names_the_run_folder(tmp_path):
    """The command suggested for a resume points at the run folder, which a command without hydra.run.dir would not find."""
    assert resume_command("train.py model=alista", tmp_path) == f"train.py model=alista hydra.run.dir={tmp_path} resume=true"
    assert resume_command("train.py hydra.run.dir=runs/a", tmp_path) == "train.py hydra.run.dir=runs/a resume=true"


# Layer-wise schedule of the small run: with a min_delta of 100 dB only a stage's first check counts as an
# improvement, so each stage lasts 2 checks (2 epochs of 2 steps): 3 layers x 3 stages x 4 steps.
LAYERWISE_RUN = ["protocol=layerwise", "protocol.patience=1", "protocol.min_delta=100", "trainer.max_steps=100", "logger=none"]
LAYERWISE_STEPS = 36


def test_layerwise_run_card(compose_train, tmp_path):
    _train_in_process(compose_train, tmp_path, LAYERWISE_RUN)

    card = json.loads((tmp_path / CARD_FILE).read_text())
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    state = next(value for key, value in checkpoint["callbacks"].items() if "LayerwiseTraining" in key)
    assert card["training"]["global_steps"] == LAYERWISE_STEPS
    assert card["training"]["protocol"] == "layerwise"
    assert card["training"]["layerwise"]["finished"] is True
    assert (card["training"]["layerwise"]["layer"], card["training"]["layerwise"]["stage"]) == (N_LAYERS, 3)
    assert card["config"]["protocol"]["n_layers"] == N_LAYERS
    assert checkpoint["hyper_parameters"]["lr_schedule"] == "constant"
    assert checkpoint["lr_schedulers"] == []
    assert state["finished"] is True


@IGNORE_EXISTING_CHECKPOINTS
@IGNORE_MISSING_MONITOR
def test_layerwise_resume_matches_straight_run(compose_train, tmp_path):
    straight = tmp_path / "straight"
    resumed = tmp_path / "resumed"
    _train_in_process(compose_train, straight, LAYERWISE_RUN)
    # Epoch 6 ends at step 14, after the first check of layer 2's stage 1.
    _train_in_process(compose_train, resumed, LAYERWISE_RUN, extra_callbacks=[StopAfterEpoch(6)])

    _train_in_process(compose_train, resumed, [*LAYERWISE_RUN, "resume=true"])

    expected = torch.load(straight / "checkpoints" / "last.ckpt", weights_only=True)
    actual = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)
    assert actual["global_step"] == expected["global_step"] == LAYERWISE_STEPS
    for key, value in expected["state_dict"].items():
        assert torch.equal(actual["state_dict"][key], value), key
    for key, value in expected["optimizer_states"][0]["state"].items():
        assert torch.equal(actual["optimizer_states"][0]["state"][key]["exp_avg"], value["exp_avg"]), key


def test_resume_run_config_before_protocol(tmp_path):
    config = {"seed": 0, "resume": True, "model": {"name": "alista"}, "protocol": {"name": "end_to_end"}}
    legacy = {key: value for key, value in config.items() if key not in ("resume", "protocol")}
    (tmp_path / RUN_CONFIG_FILE).write_text(json.dumps({"command": "train.py", "config": legacy}))

    record = record_or_check_run_config(config, tmp_path)

    assert record["config"] == legacy
    with pytest.raises(ValueError, match="protocol.name: run started with 'end_to_end', got 'layerwise'"):
        record_or_check_run_config(config | {"protocol": {"name": "layerwise"}}, tmp_path)


def test_resume_run_config_before_trainer_options(tmp_path):
    trainer = {"max_steps": 10, "num_nodes": 1, "precision": "32-true"}
    config = {"seed": 0, "resume": True, "protocol": {"name": "end_to_end"}, "trainer": trainer}
    legacy = {"seed": 0, "protocol": {"name": "end_to_end"}, "trainer": {"max_steps": 10}}
    (tmp_path / RUN_CONFIG_FILE).write_text(json.dumps({"command": "train.py", "config": legacy}))

    assert record_or_check_run_config(config, tmp_path)["config"] == legacy
    with pytest.raises(ValueError, match="trainer.precision: run started with '32-true', got 'bf16-mixed'"):
        record_or_check_run_config(config | {"trainer": trainer | {"precision": "bf16-mixed"}}, tmp_path)


def test_layerwise_resume_with_larger_cap(tmp_path):
    config = {"seed": 0, "resume": False, "protocol": {"name": "layerwise"}, "trainer": {"max_steps": 100}}
    record_or_check_run_config(config, tmp_path)

    resumed = config | {"resume": True, "trainer": {"max_steps": 400}}

    assert record_or_check_run_config(resumed, tmp_path)["config"]["trainer"]["max_steps"] == 100
    with pytest.raises(ValueError, match="seed: run started with 0, got 1"):
        record_or_check_run_config(resumed | {"seed": 1}, tmp_path)


@IGNORE_EXISTING_CHECKPOINTS
def test_resume_card_adds_training_time(compose_train, tmp_path):
    _train_in_process(compose_train, tmp_path, ["logger=none"], extra_callbacks=[StopAfterFirstEpoch()])
    first_session = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["training_time_s"]

    _train_in_process(compose_train, tmp_path, ["logger=none", "resume=true"])

    card = json.loads((tmp_path / CARD_FILE).read_text())
    total = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["training_time_s"]
    assert first_session > 0
    assert total > first_session
    assert card["training"]["time_s"] >= round(total, 1) - 0.1


def test_publish_existing_name_rejected(compose_train, tmp_path, zoo_checkpoints):
    zoo_checkpoints.mkdir(parents=True, exist_ok=True)
    (zoo_checkpoints / "alista.taken.json").write_text("{}")

    with pytest.raises(FileExistsError, match="publish_as='alista.taken' would replace the checkpoint"):
        _train_in_process(compose_train, tmp_path, ["logger=none", "publish_as=alista.taken"])

    assert not (tmp_path / "checkpoints").exists()
    assert (zoo_checkpoints / "alista.taken.json").read_text() == "{}"
