"""Fixtures shared by the tests: one torch thread, an isolated checkpoints folder, a small problem and Hydra composition.

A module that exports or publishes models opts in to the isolation with
``pytestmark = pytest.mark.usefixtures("zoo_checkpoints")``. Tests of the shipped checkpoints must
not opt in, because they read the repository's checkpoints/.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from unrolled.problems import SparseCoding

CONFIG_DIR = Path(__file__).resolve().parents[1] / "conf"


@pytest.fixture
def single_torch_thread():
    """Run each test with one intra-op thread and restore the previous count afterwards.

    The tensors here are tiny, so a second thread only adds synchronisation. On a loaded 2-core
    machine, 1,000 ISTA iterations on a 20 x 40 problem took 0.03 s with one thread and 0.7 s with two.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def zoo_checkpoints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point ``UNROLLED_ZOO_CHECKPOINTS`` at an empty folder, so no test reads or writes the repository's checkpoints/."""
    folder = tmp_path / "zoo_checkpoints"
    monkeypatch.setenv("UNROLLED_ZOO_CHECKPOINTS", str(folder))
    return folder


@pytest.fixture
def small_problem() -> SparseCoding:
    """Sparse coding with a 50 x 100 operator and 64-sample validation and test sets."""
    return SparseCoding(m=50, n=100, n_val=64, n_test=64)


@pytest.fixture
def compose_train() -> Iterator[Callable[..., DictConfig]]:
    """Return ``compose(overrides, run_dir=None, config_name="train")``: the config that train.py's job receives.

    With ``run_dir`` the Hydra runtime is set as if the job ran in that folder, so the
    ``${hydra:runtime.output_dir}`` interpolations of the callbacks and loggers resolve, and the
    ``hydra`` node is removed as in ``@hydra.main``. Without it the ``hydra`` node stays for inspection.
    """

    def compose_config(overrides: list[str], run_dir: Path | None = None, config_name: str = "train") -> DictConfig:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
        if run_dir is None:
            return cfg
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(run_dir)
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            del cfg["hydra"]
        return cfg

    yield compose_config
    HydraConfig.instance().cfg = None
