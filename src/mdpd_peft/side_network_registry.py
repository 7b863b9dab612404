"""The names ``MDPDConfig.side_network`` accepts: a registry that imports nothing of the package.

The config checks names against it and the side networks fill it (``register_side_network``), so the data
flows one way: registry <- config <- side networks.
"""

from __future__ import annotations

SIDE_NETWORKS: dict[str, type] = {}  # name -> SideNetwork subclass, in registration order


def register_side_network(name: str):
    """Class decorator: make the side network available as ``MDPDConfig(side_network=name)``."""

    def register(cls: type) -> type:
        SIDE_NETWORKS[name] = cls
        return cls

    return register
