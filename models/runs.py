"""Run folders of ``train.py``: the checkpoint to resume from, and publishing a run's weights and card to the zoo."""

from __future__ import annotations

import json
import logging
import shlex
import sys
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from models.hub import CARD_FILE, WEIGHTS_FILE, checkpoints_dir
from models.trainer import first_rank_only
from unrolled.files import write_atomic

log = logging.getLogger(__name__)
log.addFilter(first_rank_only)


def run_command() -> str:
    """Return the command line of this run, for its card and for the resume command.

    In a Hydra sweep (``-m``) that is ``train.py`` with the job's own overrides: the sweep's command
    line would rerun every job of the sweep.
    """
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return shlex.join(["train.py", *HydraConfig.get().overrides.task])
    return " ".join(sys.argv)


def last_checkpoint(run_dir: Path) -> Path | None:
    path = run_dir / "checkpoints" / "last.ckpt"
    return path if path.is_file() else None


def resume_checkpoint(config: dict[str, Any], run_dir: Path) -> Path | None:
    """Return ``last.ckpt`` of the run when ``config["resume"]`` is true (raising if it is missing), else None."""
    if not config.get("resume"):
        return None
    resume_from = last_checkpoint(run_dir)
    if resume_from is None:
        raise FileNotFoundError(
            f"resume=true but {run_dir / 'checkpoints' / 'last.ckpt'} does not exist; "
            "pass the folder of the run to resume as hydra.run.dir."
        )
    log.info("Resuming from %s", resume_from)
    return resume_from


def check_publish_target(config: dict[str, Any]) -> None:
    """Raise before training if ``publish_as`` names a checkpoint that exists and ``publish_overwrite`` is false."""
    name = config.get("publish_as")
    if not name or config.get("publish_overwrite"):
        return
    card = checkpoints_dir() / f"{name}.json"
    if card.exists():
        raise FileExistsError(
            f"publish_as={name!r} would replace the checkpoint {card}. Pass publish_overwrite=true to replace it, "
            "publish_as=<another name> to publish beside it, or publish_as=null to keep the run in its folder only."
        )


def publish(run_dir: Path, name: str) -> None:
    """Copy a run's weights and card into the checkpoints folder as ``<name>.safetensors`` and ``<name>.json``."""
    target = checkpoints_dir()
    card = json.loads((run_dir / CARD_FILE).read_text())
    card["weights_file"] = f"{name}.safetensors"
    write_atomic(target / card["weights_file"], (run_dir / WEIGHTS_FILE).read_bytes())
    write_atomic(target / f"{name}.json", (json.dumps(card, indent=2) + "\n").encode())
    log.info("Published %s to %s", name, target)
