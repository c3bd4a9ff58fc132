"""Unrolled networks: per-iteration updates with learnable parameters."""

from unrolled.layers.lista import ALISTA, LISTA, LISTACP, UnrolledISTA, alista_weight, support_bypass_fraction

__all__ = ["ALISTA", "LISTA", "LISTACP", "UnrolledISTA", "alista_weight", "support_bypass_fraction"]
