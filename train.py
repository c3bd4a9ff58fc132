"""Train an unrolled network: ``python train.py model=alista model.n_layers=16``.

Hydra composes ``conf/train.yaml``; everything else lives in :mod:`models.training`. The run folder
(printed at the end) holds the Lightning checkpoints, the CSV logs, ``model.safetensors`` and
``model_card.json`` with the test NMSE per layer.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from models.module import NonFiniteLossError
from models.training import train

log = logging.getLogger(__name__)


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values()]
    config = OmegaConf.to_container(cfg, resolve=True)
    config.pop("callbacks", None)
    config.pop("logger", None)
    try:
        result = train(config, run_dir, callbacks, loggers)
    except NonFiniteLossError as error:
        log.error("%s", error)
        sys.exit(1)
    print(f"Run folder: {run_dir}")
    return result.get("test_nmse_db")


if __name__ == "__main__":
    main()
