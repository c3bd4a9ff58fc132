"""train.py with trainer=ddp on the CPU: two processes over gloo against one process with the same global batch.

The runs are real train.py subprocesses (Lightning starts the second rank by running the script
again). One DDP run is killed with SIGKILL at the start of an epoch, as a preempted job would be,
and resumed from its last checkpoint.
"""

from __future__ import annotations

import csv
import inspect
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from models import load_run
from models.hub import CARD_FILE, WEIGHTS_FILE
from models.module import UnrolledModule
from models.training import RUN_CONFIG_FILE
from unrolled.metrics import nmse_db

pytestmark = pytest.mark.usefixtures("zoo_checkpoints")

REPO_ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 600
STEPS_PER_EPOCH = 100
MAX_STEPS = 300
KILL_AT_EPOCH = 2
GLOBAL_BATCH = 64
N_VAL = 256
# ALISTA with 4 layers on a 50 x 100 problem: 300 steps bring the test NMSE from about -5 dB to about -13 dB.
RUN = [
    "problem.m=50",
    "problem.n=100",
    f"problem.n_val={N_VAL}",
    "problem.n_test=256",
    "model.n_layers=4",
    f"trainer.max_steps={MAX_STEPS}",
    f"data.steps_per_epoch={STEPS_PER_EPOCH}",
    "trainer.accelerator=cpu",
    "~callbacks.progress_bar",
    "+trainer.enable_progress_bar=false",
]
DDP = ["trainer=ddp", "trainer.devices=2", f"data.batch_size={GLOBAL_BATCH // 2}"]
ONE_PROCESS = ["trainer=cpu", f"data.batch_size={GLOBAL_BATCH}", "num_threads=1"]


class KillAtEpoch(pl.Callback):
    """SIGKILL the whole process group (every rank) before the first batch of ``epoch``, after the previous epoch's checkpoints."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if trainer.current_epoch == self.epoch and trainer.is_global_zero:
            os.killpg(os.getpgid(0), signal.SIGKILL)


def _train(run_dir: Path, overrides: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run train.py in its own process group, so that a kill reaches the DDP rank it starts and nothing else."""
    command = [sys.executable, "train.py", *RUN, *overrides, f"hydra.run.dir={run_dir}"]
    return subprocess.run(
        command, cwd=REPO_ROOT, env=os.environ | (env or {}), capture_output=True, text=True, timeout=TIMEOUT_S,
        start_new_session=True,
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, tuple[Path, subprocess.CompletedProcess]]:
    """One process, DDP, and DDP killed at the start of epoch 2 then resumed: run folders and processes."""
    folder = tmp_path_factory.mktemp("ddp")
    (folder / "kill_at_epoch.py").write_text("import os\nimport signal\n\nimport pytorch_lightning as pl\n\n\n" + inspect.getsource(KillAtEpoch))
    python_path = os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")]))
    kill = ["+callbacks.kill._target_=kill_at_epoch.KillAtEpoch", f"+callbacks.kill.epoch={KILL_AT_EPOCH}"]

    results = {
        "one_process": (folder / "one_process", _train(folder / "one_process", ONE_PROCESS)),
        "ddp": (folder / "ddp", _train(folder / "ddp", DDP)),
        "killed": (folder / "resumed", _train(folder / "resumed", [*DDP, *kill], {"PYTHONPATH": python_path})),
    }
    killed_checkpoint = torch.load(folder / "resumed" / "checkpoints" / "last.ckpt", weights_only=True)
    results["resumed"] = (folder / "resumed", _train(folder / "resumed", [*DDP, "resume=true"]))
    results["killed_checkpoint"] = killed_checkpoint
    return results


def _completed(runs, name: str) -> Path:
    run_dir, result = runs[name]
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


def _card(run_dir: Path) -> dict:
    return json.loads((run_dir / CARD_FILE).read_text())


def test_ddp_matches_one_process(runs):
    one_process, ddp = _card(_completed(runs, "one_process")), _card(_completed(runs, "ddp"))

    one_db = one_process["test_metrics"]["per_layer"]["nmse_db"][-1]
    ddp_db = ddp["test_metrics"]["per_layer"]["nmse_db"][-1]
    assert one_db < -11.0
    assert ddp_db < -11.0
    assert ddp_db == pytest.approx(one_db, abs=0.3)
    assert ddp["config"]["trainer"]["devices"] == 2
    assert ddp["training"]["global_steps"] == one_process["training"]["global_steps"] == MAX_STEPS


def test_ddp_validation_metric_covers_every_sample_once(runs):
    """The logged val/nmse_db, reduced over the two ranks' halves, equals the NMSE of the whole set."""
    run_dir = _completed(runs, "ddp")
    with open(run_dir / "logs" / "version_0" / "metrics.csv") as file:
        logged = [float(row["val/nmse_db"]) for row in csv.DictReader(file) if row.get("val/nmse_db")]
    module = UnrolledModule.load_from_checkpoint(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    y, x = module.problem.fixed_set("val")

    with torch.no_grad():
        x_hat = module.network(y.to(torch.float32))[-1]

    assert len(y) == N_VAL
    assert logged[-1] == pytest.approx(nmse_db(x_hat, x).item(), abs=1e-3)


def test_ddp_rank_zero_writes_run_files(runs):
    run_dir, result = runs["ddp"]
    _completed(runs, "ddp")

    record = json.loads((run_dir / RUN_CONFIG_FILE).read_text())
    assert "train_ddp_process" not in record["command"]
    assert record["command"].startswith("train.py")
    assert result.stdout.count("Run folder:") == 1
    assert sorted(path.name for path in run_dir.glob("*.safetensors")) == [WEIGHTS_FILE]
    assert load_run(run_dir).network.n_layers == 4


def test_ddp_killed_run_left_last_epoch_checkpoint(runs):
    _, result = runs["killed"]

    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    assert runs["killed_checkpoint"]["global_step"] == KILL_AT_EPOCH * STEPS_PER_EPOCH
    assert runs["killed_checkpoint"]["epoch"] == KILL_AT_EPOCH - 1


def test_ddp_resume_after_kill_matches_uninterrupted(runs):
    resumed_dir, straight_dir = _completed(runs, "resumed"), _completed(runs, "ddp")
    resumed = torch.load(resumed_dir / "checkpoints" / "last.ckpt", weights_only=True)
    straight = torch.load(straight_dir / "checkpoints" / "last.ckpt", weights_only=True)

    assert resumed["global_step"] == straight["global_step"] == MAX_STEPS
    for key, value in straight["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][key], value, rtol=1e-5, atol=1e-6, msg=key)
    card = _card(resumed_dir)
    assert card["training"]["resumed_from"] == str(resumed_dir / "checkpoints" / "last.ckpt")
    assert card["test_metrics"]["per_layer"]["nmse_db"][-1] == pytest.approx(
        _card(straight_dir)["test_metrics"]["per_layer"]["nmse_db"][-1], abs=1e-3
    )
