"""Unrolled networks: per-iteration updates with learnable parameters."""

from unrolled.layers.alista import ALISTA, TiLISTA, alista_weight, mutual_coherence
from unrolled.layers.base import UnrolledISTA, support_bypass_fraction
from unrolled.layers.glista import GLISTA
from unrolled.layers.hyperlista import HyperLISTA
from unrolled.layers.lamp import LAMP
from unrolled.layers.lfista import LFISTA
from unrolled.layers.lista import LISTA, LISTASS
from unrolled.layers.lista_cp import LISTACP, LISTACPSS
from unrolled.layers.slista import SLISTA
from unrolled.layers.admm_net import ADMMNet
from unrolled.layers.ista_net import ISTANetPlus
from unrolled.layers.pgd_cnn import UnrolledPGDCNN

__all__ = [
    "ADMMNet",
    "ALISTA",
    "GLISTA",
    "HyperLISTA",
    "ISTANetPlus",
    "LAMP",
    "LFISTA",
    "LISTA",
    "LISTACP",
    "LISTACPSS",
    "LISTASS",
    "SLISTA",
    "TiLISTA",
    "UnrolledISTA",
    "UnrolledPGDCNN",
    "alista_weight",
    "mutual_coherence",
    "support_bypass_fraction",
]
