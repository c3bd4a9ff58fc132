"""Hydra launchers of train.py: joblib for local parallel sweeps, submitit for SLURM.

The SLURM test runs a real sweep through Hydra's submitit plugin with stand-in ``srun``, ``sbatch``
and ``sacct`` executables on PATH. The stand-in ``sbatch`` keeps the job script that submitit
generated, and ``sacct`` reports the jobs as failed, so the sweep ends without a cluster.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from models.hub import CARD_FILE

pytestmark = pytest.mark.usefixtures("zoo_checkpoints")

REPO_ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 600
SMALL_RUN = ["problem.m=20", "problem.n=40", "problem.n_val=32", "problem.n_test=32", "trainer.max_steps=2",
             "data.steps_per_epoch=2", "data.batch_size=8", "logger=none", "~callbacks.progress_bar",
             "+trainer.enable_progress_bar=false"]
STAND_INS = {
    "srun": "#!/bin/sh\nexit 1\n",
    "sbatch": '#!/bin/sh\ncp "$1" "$SUBMITTED_SCRIPT"\necho "Submitted batch job 4242"\n',
    "sacct": "#!/bin/sh\nprintf 'JobID|State|NodeList\\n4242_0|FAILED|node01\\n4242_1|FAILED|node01\\n'\n",
}


def _sweep(overrides: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "train.py", "-m", *overrides]
    return subprocess.run(command, cwd=REPO_ROOT, env=os.environ | (env or {}), capture_output=True, text=True, timeout=TIMEOUT_S)


def test_local_launcher_runs_jobs_in_parallel_workers(compose_train, tmp_path):
    sweep_dir = tmp_path / "sweep"

    result = _sweep([*SMALL_RUN, "hydra/launcher=local", "num_threads=1", "model.n_layers=2,3", f"hydra.sweep.dir={sweep_dir}"])

    assert result.returncode == 0, result.stderr[-3000:]
    assert "Joblib.Parallel(n_jobs=2" in result.stderr + result.stdout
    runs = sorted(path.name for path in sweep_dir.iterdir() if path.is_dir())
    assert runs == ["0_alista_2_sparse_coding", "1_alista_3_sparse_coding"]
    for run, n_layers in zip(runs, (2, 3)):
        card = json.loads((sweep_dir / run / CARD_FILE).read_text())
        assert card["n_layers"] == n_layers
        # The job's own command: rerunning the sweep's would start every job again.
        assert card["command"].startswith("train.py ")
        assert f"model.n_layers={n_layers}" in card["command"].split()
        assert "-m" not in card["command"].split()


def test_sweep_with_ddp_rejected(tmp_path):
    result = _sweep([*SMALL_RUN, "trainer=ddp", "trainer.accelerator=cpu", "model.n_layers=2", f"hydra.sweep.dir={tmp_path}"])

    assert result.returncode != 0
    assert "trainer=ddp with 2 processes in a Hydra sweep (-m)" in result.stderr


def test_slurm_launcher_job_script(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in STAND_INS.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    script = tmp_path / "submitted.sh"
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "SUBMITTED_SCRIPT": str(script)}
    overrides = ["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=90", "trainer=ddp",
                 "trainer.devices=4", "trainer.num_nodes=2", "model.n_layers=8,16", f"hydra.sweep.dir={tmp_path / 'sweep'}"]

    result = _sweep(overrides, env)

    # The stand-in sacct reports both jobs as failed, so the sweep fails after submitting them.
    assert result.returncode != 0
    assert "Job 4242_0 (task: 0)" in result.stderr
    lines = script.read_text().splitlines()
    for expected in ("--array=0-1%2", "--nodes=2", "--ntasks-per-node=4", "--gpus-per-node=4", "--cpus-per-task=8",
                     "--mem=64GB", "--partition=gpu", "--time=90", "--signal=USR2@120"):
        assert f"#SBATCH {expected}" in lines, expected
    assert any(line.startswith("srun ") and "submitit.core._submit" in line for line in lines)


def test_slurm_launcher_follows_trainer(compose_train):
    config = compose_train(["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=8", "trainer.num_nodes=3"])

    launcher = config.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (3, 8, 8)
