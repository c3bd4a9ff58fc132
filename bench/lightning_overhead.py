r"""Training throughput of the project's LightningModule under ``pl.Trainer`` against a plain PyTorch loop.

Each network (ALISTA and LISTA-CP by default, 16 layers) is trained three ways on the same data,
each in a fresh run of ``warm-up + timed`` optimizer steps:

- *plain PyTorch*: a hand-written loop over the same ``ProblemDataModule`` train loader. It runs
  the module's network and :meth:`~models.module.UnrolledModule.compute_loss`, then ``zero_grad``,
  ``backward``, ``Adam.step`` and the per-step cosine schedule of
  :func:`models.module.with_lr_schedule` (same lr, weight decay, ``T_max`` and ``eta_min``).
- *Lightning, bare*: ``trainer.fit`` on the same :class:`~models.module.UnrolledModule` with the
  options of ``conf/trainer/default.yaml``, but without logger, checkpointing, progress bar or
  validation. It shows the cost of Lightning's loop and of the module's ``training_step`` (the
  non-finite loss check and ``self.log``).
- *Lightning, train.py config*: the trainer, callbacks and logger that ``train.py`` builds from
  ``conf/train.yaml``, composed by Hydra and built by :func:`models.trainer.build_trainer`. These
  are both ``ModelCheckpoint`` callbacks, ``LearningRateMonitor``, the ``TQDMProgressBar``
  (refresh rate 20, drawn on stderr here and on stdout in train.py), the ``CSVLogger`` with
  ``log_every_n_steps: 50``, and validation at the end of the epoch.

The module, data module and problem are built as :func:`models.training.train` builds them,
after ``pl.seed_everything(seed)``. Every run is one epoch: ``data.steps_per_epoch`` and
``trainer.max_steps`` are both set to ``warm-up + timed``.

What is timed. Only the steady state of training counts. The timed window runs from the end of
step ``warm-up - 1`` to the end of the last step, so it contains exactly ``timed`` whole steps.
Each of them includes its data loading, transfer, forward, loss, backward, optimizer and
scheduler steps, and whatever Lightning, the callbacks and the logger do between two steps. In
Lightning a callback placed after the project's callbacks stamps the two ends of the window in
``on_train_batch_end``, and the plain loop stamps the same points. Trainer construction, the
validation sanity check, ``configure_optimizers`` and the first, slower steps fall outside the
window, because they cost a fixed time per run, not per sample, and would make the ratio depend
on the run length. ``CSVLogger`` writes its file every 100 steps by default (pytorch-lightning
2.6). So with 100 timed steps, the window of the train.py config contains two logging steps of
``log_every_n_steps: 50`` and one write of the CSV file, the same shares as in a long run.

Two costs outside the window are measured apart and shown in the table:

- *start-up*: from the start of the run (trainer construction, or optimizer construction in the
  plain loop) to the end of the first step.
- *epoch end*: from the end of the last step to ``on_train_end``, less the validation pass
  (``on_validation_start`` to ``on_validation_end``). For the train.py config these are the
  checkpoint writes (the best checkpoint and ``last.ckpt``), the epoch-level logging and the
  epoch-end hooks. The validation pass is left out because a plain loop would need one too.

The last column spreads the epoch-end cost over the epoch length of ``conf/train.yaml``
(``data.steps_per_epoch``, 500), as in a long run: samples/s is then ``batch · E / (E · step +
epoch end)``. This is an estimate from the two measured parts, not a measured 500-step epoch.

Rounds: one untimed warm-up round, then ``--repeats`` rounds. Each round trains once each way, in
the same order, so a change of machine load affects all three alike, and each figure is the median
over rounds. Every round also checks that the three ways trained the same thing. They must take the
same number of Adam steps and end at the same learning rate, or the benchmark raises. The notes
show the largest absolute difference between the final weights of the plain loop and of each
Lightning run. On a CPU the three runs compute the same operations in the same order, and in the
tests (``tests/test_bench_lightning.py``) their final weights agree exactly.

Run alone with ``python -m bench.lightning_overhead`` (``--help`` lists the options). The last
line printed gives, per network, Lightning's samples/s over the plain loop's, for the train.py
config with the epoch end spread over 500 steps, then for bare Lightning. Higher is better: 1.0
means that Lightning costs nothing, and the goal "Lightning adds under 10%" means a ratio of at
least 1/1.1 = 0.909.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict

from bench.timing import BenchmarkResult, check_repeats, format_ms, run_standalone
from models.data import ProblemDataModule
from models.module import UnrolledModule
from models.trainer import build_trainer
from models.training import build_module, build_protocol_callbacks
from unrolled.problems import build_problem

log = logging.getLogger(__name__)

NAME = "lightning_overhead"
CONFIG_DIR = Path(__file__).resolve().parents[1] / "conf"
DEFAULT_NETWORKS = ("alista", "lista_cp")
DEFAULT_TIMED_STEPS = 100
DEFAULT_WARMUP_STEPS = 10
# The goal "Lightning adds under 10% to the time per sample", as a ratio of samples/s.
GOAL_RATIO = 1 / 1.1

PLAIN = "plain PyTorch"
BARE = "Lightning, bare"
TRAIN_PY = "Lightning, train.py config"
LOOPS = (PLAIN, BARE, TRAIN_PY)

# Trainer options that turn the train.py trainer into bare Lightning.
BARE_TRAINER_OPTIONS = {"enable_checkpointing": False, "enable_progress_bar": False, "limit_val_batches": 0}


@dataclass
class RunRecord:
    """Timestamps (``time.perf_counter`` seconds) and end state of one training run.

    Attributes:
        started: before the trainer (or, in the plain loop, the optimizer) is built.
        first_step_end: end of step 0.
        window_start: end of step ``warm-up - 1``.
        window_end: end of the last step.
        train_end: ``on_train_end`` (the plain loop: right after its last step).
        validation_s: time spent in the validation pass at the end of the epoch.
        optimizer_steps: Adam's step count, read from its state.
        last_lr: learning rate after the last scheduler step.
        weights: final network weights, on the CPU.
    """

    started: float
    first_step_end: float
    window_start: float
    window_end: float
    train_end: float
    validation_s: float
    optimizer_steps: int
    last_lr: float
    weights: dict[str, torch.Tensor]

    @property
    def window_s(self) -> float:
        return self.window_end - self.window_start

    @property
    def startup_s(self) -> float:
        return self.first_step_end - self.started

    @property
    def epoch_end_s(self) -> float:
        return self.train_end - self.window_end - self.validation_s


@dataclass
class Setup:
    """Sizes, device and config overrides shared by every run of one network."""

    network: str
    warmup_steps: int
    timed_steps: int
    device: torch.device
    overrides: list[str] = field(default_factory=list)

    @property
    def total_steps(self) -> int:
        return self.warmup_steps + self.timed_steps


class StepClock(pl.Callback):
    """Stamps the ends of steps 0, ``warm-up - 1`` and the last, the validation pass and ``on_train_end``.

    On CUDA it synchronises the device at those points only, so that the steps in between keep
    their asynchronous launches.
    """

    def __init__(self, warmup_steps: int, total_steps: int, device: torch.device) -> None:
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.device = device
        self.stamps: dict[str, float] = {}
        self.validation_s = 0.0
        self._validation_started: float | None = None

    def _now(self) -> float:
        _synchronize(self.device)
        return time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        # global_step counts optimizer steps, so it is already one past this step.
        step = trainer.global_step - 1
        if step == 0:
            self.stamps["first_step_end"] = self._now()
        if step == self.warmup_steps - 1:
            self.stamps["window_start"] = self._now()
        if step == self.total_steps - 1:
            self.stamps["window_end"] = self._now()

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._validation_started = self._now()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking and self._validation_started is not None:
            self.validation_s += self._now() - self._validation_started
            self._validation_started = None

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.stamps["train_end"] = self._now()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of this benchmark (the common ones come from :func:`bench.timing.add_common_arguments`)."""
    parser.add_argument(
        "--lightning-networks", nargs="+", default=list(DEFAULT_NETWORKS), metavar="MODEL",
        help=f"model configs of conf/model/ to train (default: {' '.join(DEFAULT_NETWORKS)})",
    )
    parser.add_argument(
        "--lightning-timed-steps", type=int, default=DEFAULT_TIMED_STEPS,
        help=f"optimizer steps in the timed window of each run; a multiple of 100 contains the logging and CSV writes "
        f"in the shares of a long run (default {DEFAULT_TIMED_STEPS})",
    )
    parser.add_argument(
        "--lightning-warmup-steps", type=int, default=DEFAULT_WARMUP_STEPS,
        help=f"untimed optimizer steps at the start of each run, at least 1 (default {DEFAULT_WARMUP_STEPS})",
    )
    parser.add_argument(
        "--lightning-batch-size", type=int, default=None,
        help="training batch size (default: data.batch_size of conf/train.yaml, 256)",
    )
    parser.add_argument(
        "--lightning-layers", type=int, default=None,
        help="layers of every network (default: n_layers of its model config, 16)",
    )
    parser.add_argument(
        "--lightning-size", type=int, nargs=2, default=None, metavar=("M", "N"),
        help="operator size m × n of the sparse-coding problem (default: conf/problem/sparse_coding.yaml, 250 500)",
    )


def run(args: argparse.Namespace) -> BenchmarkResult:
    """Train every selected network the three ways in interleaved rounds and return the table."""
    _check_arguments(args)
    device = torch.device(args.device)
    setups = [_build_setup(network, args, device) for network in args.lightning_networks]
    # Sizes as train.py resolves them, read from the config of the first network.
    config = compose_train_config(setups[0])
    batch_size = config["data"]["batch_size"]
    steps_per_epoch = config["data"]["steps_per_epoch"]
    m, n = config["problem"]["m"], config["problem"]["n"]

    result = BenchmarkResult(
        name=NAME,
        title="Training throughput: Lightning against a plain PyTorch loop",
        description=_description(args, batch_size, m, n, steps_per_epoch),
        settings={
            "networks": args.lightning_networks, "m": m, "n": n, "batch_size": batch_size,
            "warmup_steps": args.lightning_warmup_steps, "timed_steps": args.lightning_timed_steps,
            "steps_per_epoch_for_amortisation": steps_per_epoch, "repeats": args.repeats, "device": str(device),
            "torch_threads": torch.get_num_threads(), "pytorch_lightning": pl.__version__,
        },
        columns=[
            "network", "loop", "step (ms)", "samples/s", "vs plain", "start-up (ms)", "epoch end (ms)",
            f"vs plain, {steps_per_epoch}-step epochs",
        ],
    )
    train_py_ratios, bare_ratios = [], []
    for setup in setups:
        records = _measure(setup, args.repeats)
        rows, ratios, weight_differences = _summarise(setup, records, batch_size, steps_per_epoch)
        result.rows += rows
        train_py_ratios.append(f"{setup.network} {ratios[TRAIN_PY]:.3f}")
        bare_ratios.append(f"{setup.network} {ratios[BARE]:.3f}")
        layers = compose_train_config(setup)["model"]["n_layers"]
        result.notes.append(
            f"{setup.network} ({layers} layers): largest |plain − Lightning| of the final weights over all rounds: "
            + ", ".join(f"{loop} {difference:.2g}" for loop, difference in weight_differences.items())
            + "."
        )

    result.notes.append(
        "step: median time of one optimizer step in the timed window, data loading included. vs plain: samples/s over "
        "the plain loop's. start-up: run start to the end of the first step. epoch end: end of the last step to "
        "on_train_end, validation pass excluded. The last column also counts the epoch end, once per "
        f"{steps_per_epoch} steps."
    )
    result.ratio_line = (
        "ratio " + ", ".join(train_py_ratios) + "; bare Lightning: " + ", ".join(bare_ratios)
        + f" (Lightning samples/s / plain PyTorch loop samples/s, batch {batch_size}, train.py's trainer, callbacks and "
        f"CSV logger with the epoch end spread over {steps_per_epoch} steps; higher is better, goal >= {GOAL_RATIO:.3f}, "
        "i.e. Lightning adds under 10%)"
    )
    return result


def _check_arguments(args: argparse.Namespace) -> None:
    check_repeats(args.repeats)
    for option in ("lightning_timed_steps", "lightning_warmup_steps", "lightning_batch_size", "lightning_layers"):
        value = getattr(args, option)
        if value is not None and value < 1:
            raise ValueError(f"--{option.replace('_', '-')} must be >= 1, got {value}.")
    if args.lightning_size is not None and min(args.lightning_size) < 1:
        raise ValueError(f"--lightning-size must be two positive integers M N, got {args.lightning_size}.")
    if not args.lightning_networks:
        raise ValueError("--lightning-networks needs at least one model config name.")


def _build_setup(network: str, args: argparse.Namespace, device: torch.device) -> Setup:
    overrides = [f"model={network}"]
    if args.lightning_layers is not None:
        overrides.append(f"model.n_layers={args.lightning_layers}")
    if args.lightning_batch_size is not None:
        overrides.append(f"data.batch_size={args.lightning_batch_size}")
    if args.lightning_size is not None:
        overrides += [f"problem.m={args.lightning_size[0]}", f"problem.n={args.lightning_size[1]}"]
    return Setup(network, args.lightning_warmup_steps, args.lightning_timed_steps, device, overrides)


def compose_train_config(setup: Setup, run_dir: Path | None = None) -> dict[str, Any]:
    """Compose ``conf/train.yaml`` as ``train.py`` does and return it as plain data, callbacks and logger as built objects.

    Without ``run_dir`` the callbacks and loggers are left out (``"callbacks"`` and ``"loggers"``
    are empty lists), and ``trainer.max_steps`` and ``data.steps_per_epoch`` keep the project's
    values. With ``run_dir`` the run is one epoch of ``setup.total_steps`` steps, and the callbacks
    and the logger write into ``run_dir``.
    """
    overrides = [*setup.overrides, f"trainer.accelerator={_accelerator(setup.device)}"]
    if setup.device.index is not None:
        overrides.append(f"trainer.devices=[{setup.device.index}]")
    if run_dir is not None:
        overrides += [f"trainer.max_steps={setup.total_steps}", f"data.steps_per_epoch={setup.total_steps}"]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=run_dir is not None)

    callbacks: list[pl.Callback] = []
    loggers: list[Any] = []
    if run_dir is not None:
        # The callbacks and the logger resolve ${hydra:runtime.output_dir}, as in a train.py job run in run_dir.
        hydra_config = HydraConfig.instance()
        previous = hydra_config.cfg
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(run_dir)
        hydra_config.set_config(cfg)
        try:
            with open_dict(cfg):
                del cfg["hydra"]
            callbacks = [instantiate(node) for node in (cfg.get("callbacks") or {}).values()]
            loggers = [instantiate(node) for node in (cfg.get("logger") or {}).values()]
            config = OmegaConf.to_container(cfg, resolve=True)
        finally:
            hydra_config.cfg = previous
    else:
        with open_dict(cfg):
            cfg.pop("callbacks", None)
            cfg.pop("logger", None)
        config = OmegaConf.to_container(cfg, resolve=True)
    config.pop("callbacks", None)
    config.pop("logger", None)
    config["callbacks"] = callbacks
    config["loggers"] = loggers
    return config


def _accelerator(device: torch.device) -> str:
    # NOTE: the CUDA path (accelerator "gpu", stamps after a device synchronisation) has not been run, only the CPU path.
    if device.type == "cuda":
        return "gpu"
    if device.type == "cpu":
        return "cpu"
    raise ValueError(f"device must be a cpu or cuda device, got {device}.")


def _measure(setup: Setup, repeats: int) -> dict[str, list[RunRecord]]:
    """Run the three loops in one untimed warm-up round and ``repeats`` interleaved rounds, and return the timed records."""
    records: dict[str, list[RunRecord]] = {loop: [] for loop in LOOPS}
    for round_index in range(repeats + 1):
        round_records = {loop: train_once(setup, loop) for loop in LOOPS}
        _check_same_training(setup, round_records)
        if round_index > 0:
            for loop, record in round_records.items():
                records[loop].append(record)
        log.info(
            "%s %s round %d/%d done%s: step %s", NAME, setup.network, round_index, repeats,
            " (warm-up)" if round_index == 0 else "",
            ", ".join(f"{loop} {format_ms(record.window_s / setup.timed_steps)} ms" for loop, record in round_records.items()),
        )
    return records


def train_once(setup: Setup, loop: str) -> RunRecord:
    """Train a fresh module of ``setup`` for ``setup.total_steps`` steps with ``loop`` (one of :data:`LOOPS`)."""
    if loop not in LOOPS:
        raise ValueError(f"loop must be one of {LOOPS}, got {loop!r}.")
    with tempfile.TemporaryDirectory(prefix=f"{NAME}_") as folder:
        config = compose_train_config(setup, Path(folder))
        pl.seed_everything(config["seed"], workers=True, verbose=False)
        problem = build_problem(config["problem"])
        module = build_module(config)
        data = ProblemDataModule(problem, **config["data"])
        if loop == PLAIN:
            return _train_plain(setup, module, data)
        return _train_lightning(setup, config, module, data, Path(folder), bare=loop == BARE)


def _train_plain(setup: Setup, module: UnrolledModule, data: ProblemDataModule) -> RunRecord:
    """Train with a hand-written loop that does the work of Lightning's automatic optimisation and nothing more."""
    device = setup.device
    started = time.perf_counter()
    module.to(device)
    module.train()

    hparams = module.hparams
    optimizer = torch.optim.Adam(module.network.parameters(), lr=hparams.lr, weight_decay=hparams.weight_decay)
    # The schedule of with_lr_schedule: estimated_stepping_batches is max_steps in these one-epoch runs.
    scheduler = None
    if hparams.lr_schedule != "constant":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=setup.total_steps, eta_min=hparams.lr * hparams.lr_min_ratio
        )

    stamps = {}
    non_blocking = device.type == "cuda"
    for step, (y, x) in enumerate(data.train_dataloader()):
        y = y.to(device, non_blocking=non_blocking)
        x = x.to(device, non_blocking=non_blocking)
        optimizer.zero_grad()
        loss = module.compute_loss(module.network(y), x, y)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()

        if step == 0:
            stamps["first_step_end"] = _stamp(device)
        if step == setup.warmup_steps - 1:
            stamps["window_start"] = _stamp(device)
        if step == setup.total_steps - 1:
            stamps["window_end"] = _stamp(device)
            break
    return RunRecord(
        started=started, **stamps, train_end=_stamp(device), validation_s=0.0,
        optimizer_steps=_adam_steps(optimizer), last_lr=optimizer.param_groups[0]["lr"],
        weights=_cpu_weights(module),
    )


def _train_lightning(
    setup: Setup, config: dict[str, Any], module: UnrolledModule, data: ProblemDataModule, run_dir: Path, bare: bool
) -> RunRecord:
    """Train with ``trainer.fit``: the trainer of train.py, or bare Lightning with the options of :data:`BARE_TRAINER_OPTIONS`."""
    clock = StepClock(setup.warmup_steps, setup.total_steps, setup.device)
    options = dict(config["trainer"])
    if bare:
        options |= BARE_TRAINER_OPTIONS
        callbacks, loggers = [clock], []
    else:
        callbacks = [*config["callbacks"], *build_protocol_callbacks(config), clock]
        loggers = config["loggers"]

    # TQDMProgressBar draws on sys.stdout, which carries only the benchmark's table.
    with _quiet_lightning(), redirect_stdout(sys.stderr):
        started = time.perf_counter()
        trainer = build_trainer(options, run_dir, callbacks, loggers)
        trainer.fit(module, datamodule=data)

    if trainer.global_step != setup.total_steps:
        raise RuntimeError(f"{setup.network}: Lightning stopped after {trainer.global_step} steps, expected {setup.total_steps}.")
    optimizer = trainer.optimizers[0]
    return RunRecord(
        started=started, **clock.stamps, validation_s=clock.validation_s,
        optimizer_steps=_adam_steps(optimizer), last_lr=optimizer.param_groups[0]["lr"],
        weights=_cpu_weights(module),
    )


@contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Silence Lightning's per-fit notices (devices, tips, the max_steps stop) and its warning about loader workers.

    The data are drawn in the main process in both loops, as in train.py, so the advice to add
    workers is not acted on.
    """
    loggers = [logging.getLogger(name) for name in ("pytorch_lightning", "lightning_fabric", "lightning")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=r".*LeafSpec.*")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _check_same_training(setup: Setup, records: dict[str, RunRecord]) -> None:
    """Raise unless every loop took ``setup.total_steps`` Adam steps and ended at the same learning rate."""
    for loop, record in records.items():
        if record.optimizer_steps != setup.total_steps:
            raise RuntimeError(
                f"{setup.network}, {loop}: Adam took {record.optimizer_steps} steps, expected {setup.total_steps}; "
                "the loops did not do the same training."
            )
        plain_lr = records[PLAIN].last_lr
        if abs(record.last_lr - plain_lr) > 1e-9 * max(abs(plain_lr), 1e-30):
            raise RuntimeError(
                f"{setup.network}, {loop}: final learning rate {record.last_lr!r}, but {plain_lr!r} in the plain loop; "
                "the schedules differ."
            )


def max_weight_difference(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> float:
    """Return the largest absolute difference between two state dicts with the same keys."""
    if first.keys() != second.keys():
        raise ValueError(f"state dicts have different keys: {sorted(first.keys() ^ second.keys())}.")
    return max((float((first[key] - second[key]).abs().max()) for key in first if first[key].numel()), default=0.0)


def _summarise(
    setup: Setup, records: dict[str, list[RunRecord]], batch_size: int, steps_per_epoch: int
) -> tuple[list[list[str]], dict[str, float], dict[str, float]]:
    """Return the table rows of one network, the ratio of each loop's samples/s to the plain loop's, and the weight differences."""
    step_s = {loop: statistics.median(record.window_s for record in runs) / setup.timed_steps for loop, runs in records.items()}
    startup_s = {loop: statistics.median(record.startup_s for record in runs) for loop, runs in records.items()}
    epoch_end_s = {loop: statistics.median(record.epoch_end_s for record in runs) for loop, runs in records.items()}
    epoch_s = {loop: steps_per_epoch * step_s[loop] + epoch_end_s[loop] for loop in records}

    ratios = {loop: step_s[PLAIN] / step_s[loop] for loop in records}
    epoch_ratios = {loop: epoch_s[PLAIN] / epoch_s[loop] for loop in records}
    rows = [
        [
            setup.network, loop, format_ms(step_s[loop]), f"{batch_size / step_s[loop]:.0f}", f"{ratios[loop]:.3f}",
            format_ms(startup_s[loop]), format_ms(epoch_end_s[loop]), f"{epoch_ratios[loop]:.3f}",
        ]
        for loop in LOOPS
    ]
    weight_differences = {
        loop: max(max_weight_difference(plain.weights, other.weights) for plain, other in zip(records[PLAIN], records[loop]))
        for loop in (BARE, TRAIN_PY)
    }
    summary_ratios = {BARE: ratios[BARE], TRAIN_PY: epoch_ratios[TRAIN_PY]}
    return rows, summary_ratios, weight_differences


def _adam_steps(optimizer: torch.optim.Optimizer) -> int:
    """Return the number of steps Adam has applied, from the ``step`` entry of its per-parameter state (0 before any)."""
    steps = [int(state["step"]) for state in optimizer.state.values() if "step" in state]
    return max(steps, default=0)


def _cpu_weights(module: UnrolledModule) -> dict[str, torch.Tensor]:
    return {key: value.detach().to("cpu", copy=True) for key, value in module.network.state_dict().items()}


def _stamp(device: torch.device) -> float:
    _synchronize(device)
    return time.perf_counter()


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _description(args: argparse.Namespace, batch_size: int, m: int, n: int, steps_per_epoch: int) -> str:
    return (
        f"Training of {', '.join(args.lightning_networks)} on sparse coding ({m} × {n}, batch {batch_size}, fresh samples "
        "every step) three ways: a plain PyTorch loop (the module's network and `compute_loss`, Adam and the per-step "
        "cosine schedule of `with_lr_schedule`, `zero_grad`/`backward`/`step`), `trainer.fit` with bare Lightning "
        "(the options of `conf/trainer/default.yaml` without logger, checkpointing, progress bar or validation), and "
        "`trainer.fit` with the trainer, callbacks and CSV logger that `train.py` builds from `conf/train.yaml`. "
        f"Each run is one epoch of {args.lightning_warmup_steps} untimed and {args.lightning_timed_steps} timed steps "
        "on a fresh module, and only the timed steps count for samples/s: the window runs from the end of the last "
        "untimed step to the end of the last step, stamped by a callback in `on_train_batch_end` (at the same points "
        "in the plain loop), so trainer construction and start-up stay out. *Start-up* (run start to the end of the "
        "first step) and *epoch end* (end of the last step to `on_train_end`, less the validation pass: checkpoint "
        "writes, epoch-level logging) are shown apart, and the last column spreads the epoch end over "
        f"{steps_per_epoch} steps, the epoch length of `conf/train.yaml`. Every round also checks that the three "
        "runs took the same number of Adam steps and ended at the same learning rate. The loops run in the same "
        f"interleaved rounds: one warm-up round, then the median of {args.repeats} timed rounds."
    )


def main(argv: list[str] | None = None) -> None:
    run_standalone("python -m bench.lightning_overhead", __doc__.split("\n\n")[0], add_arguments, run, argv)


if __name__ == "__main__":
    main()
