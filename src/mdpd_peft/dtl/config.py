"""Configuration of DTL's compact side network as a PEFT method."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

from peft.config import PeftConfig
from peft.utils import PeftType
from peft.utils.constants import DUMMY_TARGET_MODULES

from ..config import invalid
from ..enum_extension import add_str_enum_member

add_str_enum_member(PeftType, "DTL")


@dataclass
class DTLConfig(PeftConfig):
    """Configuration of a DTL adapter (Fu et al., "DTL: Disentangled Transfer Learning for Visual Recognition").

    Before each encoder block a rank-``rank`` map of the block's input is added to a running sum z;
    from block ``inject_from`` on, every block's output gets ``swish(z)`` added (through one shared
    depthwise convolution for DTL+). Only the maps, the convolution and ``modules_to_save`` (the task
    head) train: about 0.04M parameters plus the head on ViT-B/16 at rank 2. The sum across blocks
    cannot be merged into the weights, so ``merge_and_unload()`` raises; ``unload()`` returns the base.

    Args:
        rank: d', the rank of each block's map (DTL: 2). Integer >= 1.
        inject_from: M, the first block (0-based) whose output gets the side information. ``None`` is
            the middle block (``num_layers // 2``; DTL's M = 7 of ViT-B's 12, 1-based).
        conv_kernel: ``None`` for DTL; an odd kernel size for DTL+'s depthwise convolution over the
            patch grid (the paper uses 3 to 5; CLS and other prefix tokens skip it; text is a 1 x N row).
        modules_to_save: Modules trained in full and saved with the adapter: the task head (PEFT adds
            ``classifier``/``score`` for ``task_type="SEQ_CLS"``; e.g. ``["classifier"]`` for ViT).
        layers_path: Dotted path of the encoder's ``nn.ModuleList`` of layers, for models the generic
            rule cannot find (as in ``MDPDConfig``).
    """

    rank: int = field(default=2, metadata={"help": "Rank d' of each block's map."})
    inject_from: Optional[int] = field(default=None, metadata={"help": "First block M (0-based) that gets the side information; None = middle."})
    conv_kernel: Optional[int] = field(default=None, metadata={"help": "None = DTL; odd kernel size = DTL+ depthwise convolution."})
    modules_to_save: Optional[list[str]] = field(default=None, metadata={"help": "Modules trained in full and saved, e.g. the task head."})
    layers_path: Optional[str] = field(default=None, metadata={"help": "Dotted path of the encoder layer ModuleList."})
    target_modules: Optional[Union[list[str], str]] = field(
        default=DUMMY_TARGET_MODULES, metadata={"help": "Fixed: DTL wraps no module; its maps act through hooks."}
    )

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = PeftType.DTL
        self.target_modules = DUMMY_TARGET_MODULES
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise invalid("rank", self.rank, "an integer >= 1", owner="DTLConfig")
        if self.conv_kernel is not None and (
            isinstance(self.conv_kernel, bool) or not isinstance(self.conv_kernel, int) or self.conv_kernel < 1 or self.conv_kernel % 2 == 0
        ):
            raise invalid("conv_kernel", self.conv_kernel, "None or an odd integer >= 1", owner="DTLConfig")
        if self.inject_from is not None and (isinstance(self.inject_from, bool) or not isinstance(self.inject_from, int) or self.inject_from < 0):
            raise invalid("inject_from", self.inject_from, "None or an integer >= 0", owner="DTLConfig")
