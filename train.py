"""Train an unrolled network: ``python train.py model=alista model.n_layers=16``.

Hydra composes ``conf/train.yaml``; everything else lives in :mod:`models.training`. The run folder
(printed at the end) contains the Lightning checkpoints, the CSV logs, ``model.safetensors`` and
``model_card.json`` with the test NMSE per layer.
"""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from models.module import NonFiniteLossError
from models.training import is_first_process, train_from_config

log = logging.getLogger(__name__)

# pytorch-lightning 2.6 warns about its own use of torch's pytree API on every run; nothing to act on.
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
# Under DDP, Lightning suggests sync_dist=True for epoch-level logs. Ours are already global: they come
# from torchmetrics, whose compute() reduces the metric states over ranks.
warnings.filterwarnings("ignore", message=r".*when logging on epoch level in distributed setting.*")


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        result = train_from_config(cfg, run_dir)
    except NonFiniteLossError as error:
        log.error("%s", error)
        sys.exit(1)
    if is_first_process():
        print(f"Run folder: {run_dir}")
    return result.get("test_nmse_db")


if __name__ == "__main__":
    main()
