"""timm entry points, so that ``timm.create_model("alista.<tag>", pretrained=True)`` loads a shipped checkpoint.

timm splits ``"alista.sc250x500_noiseless"`` into the entry point ``alista`` and the tag, and passes
the tag as ``pretrained_cfg``. Without ``pretrained`` the entry point builds an untrained network
for the reference problem (250 × 500 sparse coding), or for the operator passed as ``A``.
"""

from __future__ import annotations

from typing import Any

import torch
from timm.models import register_model

from models.hub import load_pretrained
from models.registry import build_network
from unrolled.layers import UnrolledISTA
from unrolled.problems import SparseCoding


def _create(network: str, pretrained: bool, pretrained_cfg: Any, A: torch.Tensor | None = None, n_layers: int = 16, **kwargs: Any) -> UnrolledISTA:
    for timm_only in ("pretrained_cfg_overlay", "cache_dir"):
        kwargs.pop(timm_only, None)
    if pretrained:
        tag = pretrained_cfg if isinstance(pretrained_cfg, str) else None
        if tag is None:
            raise ValueError(
                f"timm.create_model({network!r}, pretrained=True) needs a tag naming the checkpoint, "
                f"e.g. '{network}.sc250x500_noiseless'; see models.list_pretrained()."
            )
        return load_pretrained(f"{network}.{tag}").network
    if A is None:
        A = SparseCoding().A.to(torch.float32)
    return build_network(network, A, n_layers, **kwargs)


@register_model
def lista(pretrained: bool = False, pretrained_cfg: Any = None, **kwargs: Any) -> UnrolledISTA:
    return _create("lista", pretrained, pretrained_cfg, **kwargs)


@register_model
def lista_cp(pretrained: bool = False, pretrained_cfg: Any = None, **kwargs: Any) -> UnrolledISTA:
    return _create("lista_cp", pretrained, pretrained_cfg, **kwargs)


@register_model
def alista(pretrained: bool = False, pretrained_cfg: Any = None, **kwargs: Any) -> UnrolledISTA:
    return _create("alista", pretrained, pretrained_cfg, **kwargs)
