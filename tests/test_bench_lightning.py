"""Tests of bench/lightning_overhead.py at a tiny size: the printed table, the ratio line and like-for-like training."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest
import torch
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint, TQDMProgressBar
from pytorch_lightning.loggers import CSVLogger

from bench import lightning_overhead
from bench.__main__ import BENCHMARKS
from bench.lightning_overhead import BARE, LOOPS, PLAIN, TRAIN_PY, Setup, compose_train_config, max_weight_difference, train_once
from bench.timing import add_common_arguments
from models.training import build_module

pytestmark = pytest.mark.usefixtures("single_torch_thread")

TINY_OPTIONS = [
    "--lightning-size", "20", "40", "--lightning-batch-size", "16", "--lightning-layers", "3",
    "--lightning-warmup-steps", "2", "--lightning-timed-steps", "4", "--repeats", "1", "--threads", "1",
]
TINY_OVERRIDES = ["model.n_layers=3", "data.batch_size=16", "problem.m=20", "problem.n=40"]


def tiny_setup(network: str) -> Setup:
    return Setup(network, warmup_steps=2, timed_steps=4, device=torch.device("cpu"), overrides=[f"model={network}", *TINY_OVERRIDES])


def test_standalone_run_prints_table_then_ratio(capsys):
    lightning_overhead.main(TINY_OPTIONS)
    lines = capsys.readouterr().out.strip().splitlines()

    assert lines[0] == "Training throughput: Lightning against a plain PyTorch loop"
    header = lines[2].split()
    assert header[:4] == ["network", "loop", "step", "(ms)"]
    rows = lines[3 : 3 + 2 * len(LOOPS)]
    expected = [(network, loop) for network in ("alista", "lista_cp") for loop in LOOPS]
    assert len(rows) == len(expected)
    for row, (network, loop) in zip(rows, expected):
        assert row.split()[0] == network, row
        assert loop in row, row
        if loop == PLAIN:
            assert row.split()[5] == "1.000", row

    for network in ("alista", "lista_cp"):
        note = next(line for line in lines if line.startswith(f"{network} (3 layers): largest |plain − Lightning|"))
        match = re.search(rf"{BARE} (\S+), {TRAIN_PY} (\S+)\.$", note)
        assert match is not None, note
        for difference in match.groups():
            assert float(difference) <= 1e-6, note

    ratio_line = lines[-1]
    pattern = r"ratio alista ([0-9.]+), lista_cp ([0-9.]+); bare Lightning: alista ([0-9.]+), lista_cp ([0-9.]+) \(.*\)"
    match = re.fullmatch(pattern, ratio_line)
    assert match is not None, ratio_line
    for ratio in match.groups():
        assert float(ratio) > 0, ratio_line
    assert "goal >= 0.909" in ratio_line


@pytest.mark.parametrize("network", ["alista", "lista_cp"])
def test_loops_train_same_weights(network):
    setup = tiny_setup(network)
    records = {loop: train_once(setup, loop) for loop in LOOPS}

    for loop, record in records.items():
        assert record.optimizer_steps == setup.total_steps, loop
        assert record.last_lr == pytest.approx(records[PLAIN].last_lr, rel=1e-12), loop
    assert max_weight_difference(records[PLAIN].weights, records[BARE].weights) <= 1e-6
    assert max_weight_difference(records[PLAIN].weights, records[TRAIN_PY].weights) <= 1e-6

    initial_weights = build_module(compose_train_config(setup)).network.state_dict()
    assert max_weight_difference(initial_weights, records[PLAIN].weights) > 0


def test_run_record_stamps_are_ordered():
    setup = tiny_setup("alista")
    for loop in LOOPS:
        record = train_once(setup, loop)
        assert record.started <= record.first_step_end, loop
        assert record.first_step_end <= record.window_start, loop
        assert record.window_start < record.window_end, loop
        assert record.window_end <= record.train_end, loop
        assert record.epoch_end_s >= 0, loop


def test_train_py_config_callbacks_and_logger(tmp_path: Path):
    config = compose_train_config(tiny_setup("alista"), tmp_path)

    checkpoints = [callback for callback in config["callbacks"] if isinstance(callback, ModelCheckpoint)]
    assert len(checkpoints) == 2
    for callback in checkpoints:
        assert Path(callback.dirpath) == tmp_path / "checkpoints"
    assert any(isinstance(callback, LearningRateMonitor) for callback in config["callbacks"])
    assert any(isinstance(callback, TQDMProgressBar) for callback in config["callbacks"])
    assert [type(logger) for logger in config["loggers"]] == [CSVLogger]
    assert config["trainer"]["max_steps"] == 6
    assert config["data"]["steps_per_epoch"] == 6
    assert config["trainer"]["log_every_n_steps"] == 50


def test_project_config_keeps_epoch_length():
    config = compose_train_config(tiny_setup("alista"))

    assert config["data"]["steps_per_epoch"] == 500
    assert config["callbacks"] == []
    assert config["loggers"] == []


@pytest.mark.parametrize(
    ("option", "value"),
    [("--lightning-warmup-steps", "0"), ("--lightning-timed-steps", "0"), ("--lightning-batch-size", "0"), ("--lightning-layers", "0")],
)
def test_rejects_non_positive_sizes(option, value):
    with pytest.raises(ValueError, match=f"{option} must be >= 1, got 0"):
        lightning_overhead.main([*TINY_OPTIONS, option, value])


def test_rejects_zero_problem_size():
    with pytest.raises(ValueError, match="--lightning-size must be two positive integers"):
        lightning_overhead.main([*TINY_OPTIONS, "--lightning-size", "0", "40"])


def test_options_unique_across_benchmarks():
    parser = argparse.ArgumentParser()
    add_common_arguments(parser)
    for module in dict.fromkeys([*BENCHMARKS, lightning_overhead]):
        module.add_arguments(parser.add_argument_group(module.NAME))
