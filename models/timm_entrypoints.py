"""timm entry points ``<network>_t16`` for every registered network, and the shipped 16-layer checkpoints as their pretrained tags.

``timm.create_model("alista_t16.sc250x500_noiseless", pretrained=True)`` loads the shipped checkpoint
``alista.sc250x500_noiseless`` offline through :func:`models.hub.load_pretrained`: timm splits the
name into the entry point ``alista_t16`` and the tag, and passes the tag as ``pretrained_cfg``.
Without ``pretrained`` an entry point builds an untrained network with 16 layers for the reference
problem (250 x 500 sparse coding), or for the operator passed as ``A``.

The entry points are generated from :data:`models.registry.NETWORKS` when this module is imported,
so it must be imported after every module that registers networks (``models/__init__.py`` does so).
timm's ``register_model`` reads the pretrained tags from this module's ``default_cfgs``, so
``timm.list_models("*lista*", pretrained=True)`` lists ``<network>_t16.<tag>`` for each 16-layer card
in the checkpoints folder.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from typing import Any

import torch
from timm.models import generate_default_cfgs, register_model

from models.hub import checkpoints_dir, list_pretrained, load_pretrained
from models.registry import NETWORKS, build_network
from unrolled.layers import UnrolledISTA
from unrolled.problems import SparseCoding

log = logging.getLogger(__name__)

N_LAYERS = 16
SUFFIX = f"_t{N_LAYERS}"
# Arguments that timm.create_model passes to every entry point; these networks have no use for them.
TIMM_ONLY_ARGUMENTS = ("pretrained_cfg_overlay", "cache_dir")


def entrypoint_name(network: str) -> str:
    """Return the timm name of the 16-layer entry point of ``network``, for example ``alista_t16``."""
    return f"{network}{SUFFIX}"


def _shipped_pretrained_cfgs() -> dict[str, dict[str, Any]]:
    """Return timm pretrained cfgs keyed ``<network>_t16.<tag>`` for the 16-layer cards of registered networks.

    NOTE: the folder is read once, when this module is imported. Cards added later, or a change of
    ``$UNROLLED_ZOO_CHECKPOINTS``, do not show in ``timm.list_models``, but ``create_model`` still
    loads them because it goes through :func:`models.hub.load_pretrained` at call time.
    """
    cfgs = {}
    for name in list_pretrained():
        network, _, tag = name.partition(".")
        card_path = checkpoints_dir() / f"{name}.json"
        try:
            card = json.loads(card_path.read_text())
        except (OSError, ValueError) as error:
            log.warning("timm: skipping %s, its card cannot be read: %s", card_path, error)
            continue
        if not tag or not isinstance(card, dict) or card.get("network") != network or network not in NETWORKS:
            continue
        if card.get("n_layers") != N_LAYERS:
            continue
        weights_path = card_path.parent / str(card.get("weights_file", ""))
        # timm lists a tag as pretrained when its cfg names a weights source; loading itself goes through models.hub.
        cfgs[f"{entrypoint_name(network)}.{tag}"] = {"file": str(weights_path), "num_classes": 0}
    return cfgs


def _create(
    network: str,
    pretrained: bool,
    pretrained_cfg: Any,
    A: torch.Tensor | None = None,
    n_layers: int = N_LAYERS,
    **kwargs: Any,
) -> UnrolledISTA:
    for timm_only in TIMM_ONLY_ARGUMENTS:
        kwargs.pop(timm_only, None)
    if pretrained:
        return _load_shipped(network, _tag_of(pretrained_cfg), A=A, n_layers=n_layers, **kwargs)
    if A is None:
        A = SparseCoding().A.to(torch.float32)
    return build_network(network, A, n_layers, **kwargs)


def _tag_of(pretrained_cfg: Any) -> str | None:
    """Return the checkpoint tag that timm passes: a string, or the ``tag`` of a PretrainedCfg or dict."""
    if isinstance(pretrained_cfg, dict):
        return pretrained_cfg.get("tag")
    if isinstance(pretrained_cfg, str) or pretrained_cfg is None:
        return pretrained_cfg or None
    return getattr(pretrained_cfg, "tag", None)


def _load_shipped(network: str, tag: str | None, A: torch.Tensor | None, n_layers: int, **kwargs: Any) -> UnrolledISTA:
    entrypoint = entrypoint_name(network)
    available = [name.partition(".")[2] for name in list_pretrained() if name.partition(".")[0] == network]
    if tag is None:
        raise ValueError(
            f"timm.create_model({entrypoint!r}, pretrained=True) needs a tag naming the checkpoint, "
            f"e.g. '{entrypoint}.sc250x500_noiseless'; tags of {network}: {', '.join(available) or 'none'} "
            "(see models.list_pretrained())."
        )
    if A is not None or n_layers != N_LAYERS or kwargs:
        passed = ["A"] * (A is not None) + ["n_layers"] * (n_layers != N_LAYERS) + sorted(kwargs)
        raise ValueError(
            f"timm.create_model('{entrypoint}.{tag}', pretrained=True) takes the operator, depth and network arguments "
            f"from the checkpoint's card, got {', '.join(passed)}. Remove them, or build an untrained network without pretrained=True."
        )

    loaded = load_pretrained(f"{network}.{tag}")
    if loaded.network.n_layers != N_LAYERS:
        raise ValueError(
            f"{network}.{tag} has {loaded.network.n_layers} layers, but the entry point {entrypoint} loads "
            f"{N_LAYERS}-layer checkpoints only; load it with models.load_pretrained('{network}.{tag}')."
        )
    return loaded.network


def _make_entrypoint(network: str) -> Callable[..., UnrolledISTA]:
    """Return the entry point of ``network``, named and placed in this module as timm's ``register_model`` expects."""

    def entrypoint(pretrained: bool = False, pretrained_cfg: Any = None, **kwargs: Any) -> UnrolledISTA:
        return _create(network, pretrained, pretrained_cfg, **kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = entrypoint_name(network)
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = (
        f"{NETWORKS[network].__name__} with {N_LAYERS} layers: untrained for the 250 x 500 reference problem "
        f"(or for ``A``), or a shipped checkpoint with ``pretrained=True`` and a tag, '{entrypoint_name(network)}.<tag>'."
    )
    return entrypoint


# register_model looks up ``default_cfgs`` in the entry point's module, so it must exist before the loop.
default_cfgs = generate_default_cfgs(_shipped_pretrained_cfgs())

for _network in sorted(NETWORKS):
    _entrypoint = _make_entrypoint(_network)
    setattr(sys.modules[__name__], _entrypoint.__name__, _entrypoint)
    register_model(_entrypoint)
