"""Imaging networks through train.py's path: training, model card, float16 export, loading, verify, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from models.hub import CARD_FILE, WEIGHTS_FILE, sha256_file
from models.hub.__main__ import main as hub_main
from models.hub.imaging import (
    list_imaging_pretrained,
    load_imaging_pretrained,
    load_imaging_run,
    verify_imaging_model,
)
from models.imaging import stage_metrics
from models.training import train_from_config

pytestmark = pytest.mark.usefixtures("zoo_checkpoints", "single_torch_thread")
IGNORE_EXISTING_CHECKPOINTS = pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")
IGNORE_MISSING_MONITOR = pytest.mark.filterwarnings("ignore:.*could not find the monitored key in the returned metrics")

TINY_TRAINING = [
    "trainer.max_steps=4",
    "trainer.log_every_n_steps=1",
    "data.steps_per_epoch=2",
    "data.batch_size=2",
    "logger=none",
]
RUNS = {
    "ista_net_plus": [
        "experiment=ista_net_plus_cs25",
        "model.n_layers=2",
        "model.kwargs.channels=4",
        "problem.patch_blocks=1",
        "problem.test_size=66",
        "problem.n_val=2",
    ],
    "admm_net": ["experiment=admm_net_mri", "model.n_layers=2", "problem.n_val=2"],
    "pgd_cnn": [
        "experiment=pgd_cnn_inpainting",
        "model.n_layers=2",
        "model.kwargs.channels=4",
        "model.kwargs.depth=2",
        "problem.patch_size=32",
        "problem.test_size=64",
        "problem.n_val=2",
    ],
}


def _train(compose_train, run_dir: Path, overrides: list[str]) -> dict:
    return train_from_config(compose_train([*overrides, *TINY_TRAINING], run_dir=run_dir), run_dir)


@pytest.mark.parametrize("network", sorted(RUNS))
def test_training_writes_float16_card(network, compose_train, tmp_path):
    result = _train(compose_train, tmp_path, [*RUNS[network], f"publish_as={network}.tiny"])
    card = json.loads((tmp_path / CARD_FILE).read_text())

    assert card["network"] == network
    assert card["weights_dtype"] == "float16"
    assert card["sha256"] == sha256_file(tmp_path / WEIGHTS_FILE)
    assert len(card["test_metrics"]["psnr_db"]) == 2
    assert result["test_psnr_db"] == card["test_metrics"]["psnr_db"][-1]
    assert all(value > 5.0 for value in card["test_metrics"]["psnr_db"])

    loaded = load_imaging_run(tmp_path)
    measured = stage_metrics(loaded.network, loaded.task.fixed_set("test").to(torch.float32))
    assert measured["psnr_db"] == pytest.approx(card["test_metrics"]["psnr_db"], abs=1e-4)
    assert measured["ssim"] == pytest.approx(card["test_metrics"]["ssim"], abs=1e-5)

    assert list_imaging_pretrained() == [f"{network}.tiny"]
    verification = verify_imaging_model(f"{network}.tiny")
    assert verification.ok, verification
    assert verification.max_psnr_deviation_db < 1e-3


def test_hub_cli_lists_and_verifies_imaging(compose_train, tmp_path, capsys):
    _train(compose_train, tmp_path, [*RUNS["admm_net"], "publish_as=admm_net.tiny"])

    assert hub_main(["list"]) == 0
    listing = capsys.readouterr().out
    assert "admm_net.tiny" in listing
    assert "mri" in listing

    assert hub_main(["verify", "admm_net.tiny"]) == 0
    assert "OK: all 1 imaging models" in capsys.readouterr().out


def test_verify_fails_on_changed_card(compose_train, tmp_path, zoo_checkpoints):
    _train(compose_train, tmp_path, [*RUNS["admm_net"], "publish_as=admm_net.tiny"])
    card_path = zoo_checkpoints / "imaging" / "admm_net.tiny.json"
    card = json.loads(card_path.read_text())
    card["test_metrics"]["psnr_db"][0] += 0.5
    card_path.write_text(json.dumps(card))

    verification = verify_imaging_model("admm_net.tiny")

    assert not verification.ok
    assert verification.max_psnr_deviation_db == pytest.approx(0.5, abs=1e-3)


def test_unregistered_network_card_is_rejected(compose_train, tmp_path, zoo_checkpoints):
    _train(compose_train, tmp_path, [*RUNS["admm_net"], "publish_as=admm_net.tiny"])
    card_path = zoo_checkpoints / "imaging" / "admm_net.tiny.json"
    card = json.loads(card_path.read_text())
    card["network"] = "os.system"
    card_path.write_text(json.dumps(card))

    with pytest.raises(ValueError, match="unknown imaging network 'os.system'.*nothing was instantiated"):
        load_imaging_pretrained("admm_net.tiny")


def test_changed_weights_fail_sha256(compose_train, tmp_path, zoo_checkpoints):
    _train(compose_train, tmp_path, [*RUNS["admm_net"], "publish_as=admm_net.tiny"])
    weights = zoo_checkpoints / "imaging" / "admm_net.tiny.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x00")

    with pytest.raises(ValueError, match="sha256 .* the file is corrupt or was replaced"):
        load_imaging_pretrained("admm_net.tiny")


class StopAfterFirstEpoch(pl.Callback):
    """Stop training at the end of the first epoch, as an interruption would, after its checkpoints are written."""

    def on_train_epoch_end(self, trainer, module) -> None:
        trainer.should_stop = True


@IGNORE_EXISTING_CHECKPOINTS
@IGNORE_MISSING_MONITOR
def test_resume_matches_straight_run(compose_train, tmp_path):
    overrides = [*RUNS["pgd_cnn"], *TINY_TRAINING]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train_from_config(compose_train(overrides, run_dir=straight), straight)
    train_from_config(compose_train(overrides, run_dir=resumed), resumed, [StopAfterFirstEpoch()])
    first_part = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)

    train_from_config(compose_train([*overrides, "resume=true"], run_dir=resumed), resumed)

    expected = torch.load(straight / "checkpoints" / "last.ckpt", weights_only=True)
    actual = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)
    assert first_part["global_step"] == 2
    assert actual["global_step"] == expected["global_step"] == 4
    for key, value in expected["state_dict"].items():
        assert torch.equal(actual["state_dict"][key], value), key


def test_wrong_network_for_task(compose_train, tmp_path):
    with pytest.raises(ValueError, match="only the networks .* solve, got model=alista"):
        _train(compose_train, tmp_path, [*RUNS["admm_net"], "model=alista"])


def test_ista_net_rejects_other_tasks(compose_train, tmp_path):
    with pytest.raises(ValueError, match="ista_net_plus reconstructs block compressive sensing only"):
        _train(compose_train, tmp_path, [*RUNS["admm_net"], "model=ista_net_plus"])


def test_networks_accept_float64_evaluation_sets():
    from unrolled.layers import ISTANetPlus, UnrolledPGDCNN
    from unrolled.problems import BlockCSTask, InpaintingTask

    block = BlockCSTask(test_size=66).fixed_set("test")
    assert ISTANetPlus(2, channels=4)(block.y, block.operator).dtype == torch.float32
    inpainting = InpaintingTask(test_size=32).fixed_set("test")
    estimate = UnrolledPGDCNN(2, channels=4, depth=2)(inpainting.y, inpainting.operator, noise_std=inpainting.noise_std)
    assert estimate.dtype == torch.float32


def test_init_from_run_starts_from_its_weights(compose_train, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    overrides = RUNS["ista_net_plus"]
    _train(compose_train, first, overrides)
    # A learning rate of 1e-12 keeps the weights of the second run within Adam's step of the first's.
    _train(compose_train, second, [*overrides, f"init_from={first}", "model.optim.lr=1e-12"])

    before = load_imaging_run(first).network.state_dict()
    after = load_imaging_run(second).network.state_dict()
    assert set(before) == set(after)
    for key, value in before.items():
        torch.testing.assert_close(after[key], value, rtol=0, atol=1e-6, msg=key)
    card = json.loads((second / CARD_FILE).read_text())
    assert card["training"]["init_from"]["source"] == str(first)


def test_init_from_other_network_is_rejected(compose_train, tmp_path):
    first = tmp_path / "first"
    _train(compose_train, first, RUNS["admm_net"])
    with pytest.raises(ValueError, match="must match"):
        _train(compose_train, tmp_path / "second", [*RUNS["admm_net"], "model.n_layers=3", f"init_from={first}"])
