"""The side networks MDPD can train and fade, by their ``MDPDConfig.side_network`` name."""

from .base import SIDE_NETWORKS, BackboneStates, SideNetwork, SideOutput, register_side_network

# registered in this order, which error messages list
from .ladder import LadderSideNetwork  # noqa: I001
from .unipt import UniPTSideNetwork
from .sherl import SHERLSideNetwork
from .dtl import DTLSideNetwork

__all__ = [
    "SIDE_NETWORKS",
    "BackboneStates",
    "DTLSideNetwork",
    "LadderSideNetwork",
    "SHERLSideNetwork",
    "SideNetwork",
    "SideOutput",
    "UniPTSideNetwork",
    "register_side_network",
]
