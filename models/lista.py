"""Zoo entries of the learned-ISTA family; the networks and their papers are in :mod:`unrolled.layers`."""

from models.registry import register_network
from unrolled.layers import ALISTA, GLISTA, LAMP, LFISTA, LISTA, LISTACP, LISTACPSS, LISTASS, SLISTA, HyperLISTA, TiLISTA

register_network("lista", LISTA)
register_network("lista_ss", LISTASS)
register_network("lista_cp", LISTACP)
register_network("lista_cpss", LISTACPSS)
register_network("alista", ALISTA)
register_network("tilista", TiLISTA)
register_network("slista", SLISTA)
register_network("hyperlista", HyperLISTA)
register_network("lfista", LFISTA)
register_network("glista", GLISTA)
register_network("lamp", LAMP)
