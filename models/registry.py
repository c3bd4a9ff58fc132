"""Registry of zoo networks: names to :class:`unrolled.layers.UnrolledISTA` subclasses.

Only registered classes are ever built from a name, so a config or a model card can choose a
network but never make the loader import or instantiate arbitrary code.
"""

from __future__ import annotations

import difflib
from typing import Any

from torch import Tensor

from unrolled.layers import UnrolledISTA

NETWORKS: dict[str, type[UnrolledISTA]] = {}


def register_network(name: str, network_class: type[UnrolledISTA]) -> None:
    if name in NETWORKS:
        raise ValueError(f"network {name!r} is already registered to {NETWORKS[name].__name__}.")
    NETWORKS[name] = network_class


def unknown_name_error(kind: str, name: str, known: list[str]) -> ValueError:
    """Build the error for an unknown ``name`` among ``known``, listing the close matches."""
    matches = difflib.get_close_matches(name, known, n=5, cutoff=0.4)
    hint = f" Close matches: {', '.join(matches)}." if matches else ""
    return ValueError(f"unknown {kind} {name!r}.{hint} Available: {', '.join(sorted(known)) or 'none'}.")


def build_network(name: str, A: Tensor, n_layers: int, **kwargs: Any) -> UnrolledISTA:
    """Build the registered network ``name`` for operator ``A`` with ``n_layers`` layers."""
    if name not in NETWORKS:
        raise unknown_name_error("network", name, list(NETWORKS))
    return NETWORKS[name](A, n_layers, **kwargs)
