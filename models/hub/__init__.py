"""Export, list, load and verify trained networks: a ``.safetensors`` weights file beside a JSON model card.

Loading never unpickles anything: weights come from safetensors, the card is JSON, the sha256 of the
weights must match the card before any tensor is read, and the network class is looked up in
:data:`models.registry.NETWORKS` by name, so a card cannot make the loader build an unregistered class.

Command line (``python -m models.hub --help``): ``list`` prints a table of the shipped checkpoints,
``verify [NAME ...]`` re-measures their test metrics and compares them with the cards.
"""

from models.hub.export import (
    StorageChoice,
    choose_storage,
    export_model,
    measure_test_metrics,
    refresh_test_metrics,
    repack_checkpoint,
)
from models.hub.loading import (
    CARD_FILE,
    CARD_FORMAT,
    CHECKPOINTS_ENV,
    WEIGHTS_FILE,
    LoadedModel,
    checkpoints_dir,
    list_pretrained,
    load_card_and_network,
    load_pretrained,
    load_run,
    read_card,
    sha256_file,
)
from models.hub.verify import verify_model, verify_models

__all__ = [
    "CARD_FILE",
    "CARD_FORMAT",
    "CHECKPOINTS_ENV",
    "WEIGHTS_FILE",
    "LoadedModel",
    "StorageChoice",
    "checkpoints_dir",
    "choose_storage",
    "export_model",
    "list_pretrained",
    "load_card_and_network",
    "load_pretrained",
    "load_run",
    "measure_test_metrics",
    "read_card",
    "refresh_test_metrics",
    "repack_checkpoint",
    "sha256_file",
    "verify_model",
    "verify_models",
]
