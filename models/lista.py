"""Zoo entries of the learned-ISTA family; the networks and their papers are in :mod:`unrolled.layers.lista`."""

from models.registry import register_network
from unrolled.layers import ALISTA, LISTA, LISTACP

register_network("lista", LISTA)
register_network("lista_cp", LISTACP)
register_network("alista", ALISTA)
