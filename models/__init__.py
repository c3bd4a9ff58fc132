"""The zoo: Lightning training of unrolled networks, the network registry and pretrained checkpoints.

``import models`` registers every network family and its timm entry points.
"""

from models import (
    lista,  # noqa: F401  (registers the learned-ISTA family)
    timm_entrypoints,  # noqa: F401  (registers the timm entry points)
)
from models.hub import LoadedModel, export_model, list_pretrained, load_pretrained, load_run
from models.hub.imaging import LoadedImagingModel, list_imaging_pretrained, load_imaging_pretrained, load_imaging_run
from models.registry import NETWORKS, build_network

__all__ = [
    "NETWORKS",
    "LoadedImagingModel",
    "LoadedModel",
    "build_network",
    "export_model",
    "list_imaging_pretrained",
    "list_pretrained",
    "load_imaging_pretrained",
    "load_imaging_run",
    "load_pretrained",
    "load_run",
]
