"""DTL (Disentangled Transfer Learning) as a PEFT method of its own, ``"dtl"``: the compact side network kept at
inference, as the DTL paper deploys it. To ship a plain model instead, train ``MDPDConfig(side_network="dtl")``."""

from .config import DTLConfig
from .model import DTLModel

__all__ = ["DTLConfig", "DTLModel"]
