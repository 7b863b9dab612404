"""Configuration of Masked Dual Path Distillation (MDPD) as a PEFT method."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from peft.config import PeftConfig
from peft.utils import SAFETENSORS_WEIGHTS_NAME, WEIGHTS_NAME, PeftType
from safetensors import SafetensorError, safe_open

from .enum_extension import add_str_enum_member
from .side_network_registry import SIDE_NETWORKS

add_str_enum_member(PeftType, "MDPD")

SIDE_INITS = ("auto", "pruned", "random")
EVAL_PATHS = ("backbone", "side")
NORM_POSITIONS = ("pre", "post")
FADINGS = ("backprop", "checkpointed", "head_only", "block_local")
NONFINITE_LOSS_ACTIONS = ("raise", "skip")
LOSS_WEIGHTS = ("shallow_loss_weight", "deep_loss_weight", "logits_loss_weight", "backbone_task_loss_weight")


def invalid(field_name: str, value, allowed: str, owner: str = "MDPDConfig") -> ValueError:
    """The error every bad setting raises: which field of which config, what it got, what it accepts."""
    return ValueError(f"{owner}.{field_name}={value!r} is invalid: {field_name} must be {allowed}.")


def is_integer(value) -> bool:
    """An int, but not a bool (``True`` is an ``int`` to Python, never a count to a user)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_real(value) -> bool:
    """A finite int or float (not a bool, a string or None): NaN or inf would make the first loss non-finite."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class SideNetworkSettings:
    """The side network's settings, shared by ``MDPDConfig`` (a side network that fades) and ``SideTaskConfig``
    (side networks kept as tasks of one frozen encoder).

    Args:
        side_network: Which side network runs beside the backbone (``mdpd_peft.side_networks``):
            ``"ladder"`` (LST: a reduced copy of the blocks fed through gates; the default here; the paper
            builds its two variants on ``"unipt"`` and ``"sherl"``),
            ``"unipt"`` (UniPT: per-layer projections of every hidden state merged by token interaction
            with the last layer and a softmax over layers), ``"sherl"`` (SHERL: anti-redundancy
            aggregation of every layer, then the frozen last backbone layer), ``"dtl"`` (DTL's compact
            side network: rank-``dtl_rank`` maps of each block input, summed and added to the blocks
            from ``dtl_inject_from`` on) or ``"dtl+"`` (DTL with a depthwise convolution over the token
            layout). Under MDPD every one fades to the same plain model: only the backbone's norms and head change.
        reduction_factor: r; the side network's width is the backbone's hidden size divided by r
            (LST; the paper uses 8 for language models; also UniPT's and SHERL's width). Integer >= 1.
        side_layers: Indices (0-based) of the backbone layers that feed the side network: one side
            block each (ladder), one projection each (UniPT, SHERL; the last listed is the anchor or
            guide). ``None`` uses every layer. DTL reads every block and takes ``None`` only.
        side_head_dim: Width of each attention head in the ladder's side blocks. ``None`` keeps the backbone's head
            count (LST: every head r times narrower, 4 wide in MiniLM's r = 8 ladder); an integer gives the side
            blocks ``width // side_head_dim`` heads (the largest count at most that which divides the width). Narrow
            heads cost far more than their FLOPs: the softmax runs over as many scores per task as the backbone's.
            Pruned initialisation keeps the backbone's most important heads, each cut to this width. Ladder only.
        gate_init: Initial value of each ladder gate's logit alpha; the gate is
            ``sigmoid(alpha / gate_temperature)``, so 0.0 starts at an even mix (LST).
        gate_temperature: T in the ladder gate (LST uses 0.1). Positive.
        side_init: ``"pruned"`` initialises each side block from its backbone block by structured
            pruning (LST; channels ranked by the L1 norm of the weights that read or write them) and
            raises where it cannot apply; ``"random"`` uses PyTorch's default initialisation; ``"auto"``
            (default) prunes where the blocks are standard transformer blocks of one width, and otherwise
            initialises randomly with one log line saying why (Swin's widening stages: pruning keeps one
            set of residual channels for all blocks). Ladder only: the other side networks initialise as
            their papers do.
        dtl_rank: d', the rank of DTL's per-block maps (DTL: 2). Integer >= 1.
        dtl_inject_from: M, the first block (0-based) whose output DTL's side information is added to;
            ``None`` is the middle block (``num_layers // 2``: DTL's M = 7 of ViT-B's 12, 1-based).
        dtl_conv_kernel: Kernel size of DTL+'s depthwise convolution (DTL+: 3 to 5). Odd integer >= 1.
        layers_path: Dotted path of the encoder's ``nn.ModuleList`` of layers, for models the
            generic rule (the ModuleList whose length is the number of layers, or divides it where
            layers share weights as in ALBERT) cannot find.
        norm_position: ``"pre"`` or ``"post"``: where the side blocks put their LayerNorms. ``None``
            reads it from the backbone's LayerNorm names (pre-norm names such as
            ``layernorm_before``, ``layer_norm1``, ``norm1``; everything else is post-norm).
    """

    side_network: str = field(default="ladder", metadata={"help": "ladder, unipt, sherl, dtl or dtl+ (see side_networks)."})
    reduction_factor: int = field(default=8, metadata={"help": "Side width = hidden size / reduction_factor."})
    side_layers: Optional[list[int]] = field(
        default=None, metadata={"help": "Backbone layer indices that feed the side network; None = all."}
    )
    side_head_dim: Optional[int] = field(default=None, metadata={"help": "Ladder: width of each side attention head; None = the backbone's head count."})
    gate_init: float = field(default=0.0, metadata={"help": "Initial ladder gate logit alpha."})
    gate_temperature: float = field(default=0.1, metadata={"help": "Ladder gate temperature T."})
    side_init: str = field(default="auto", metadata={"help": f"Ladder initialisation: one of {SIDE_INITS}."})
    dtl_rank: int = field(default=2, metadata={"help": "DTL: rank d' of each block's map."})
    dtl_inject_from: Optional[int] = field(default=None, metadata={"help": "DTL: first block M (0-based) that gets the side information; None = middle."})
    dtl_conv_kernel: int = field(default=3, metadata={"help": "DTL+: kernel size of the depthwise convolution."})
    layers_path: Optional[str] = field(default=None, metadata={"help": "Dotted path of the encoder layer ModuleList."})
    norm_position: Optional[str] = field(
        default=None, metadata={"help": f"Side block LayerNorm placement: one of {NORM_POSITIONS}; None = detect."}
    )

    def check_side_network_values(self) -> None:
        """Checks the side network's settings that do not depend on the model."""
        owner = type(self).__name__
        if not isinstance(self.side_network, str) or self.side_network not in SIDE_NETWORKS:
            raise invalid("side_network", self.side_network, f"one of {tuple(SIDE_NETWORKS)}", owner)
        if not isinstance(self.side_init, str) or self.side_init not in SIDE_INITS:
            raise invalid("side_init", self.side_init, f"one of {SIDE_INITS}", owner)
        if self.norm_position is not None and self.norm_position not in NORM_POSITIONS:
            raise invalid("norm_position", self.norm_position, f"None or one of {NORM_POSITIONS}", owner)
        for name in ("reduction_factor", "dtl_rank"):
            if not (is_integer(getattr(self, name)) and getattr(self, name) >= 1):
                raise invalid(name, getattr(self, name), "an integer >= 1", owner)
        if self.side_head_dim is not None and not (is_integer(self.side_head_dim) and self.side_head_dim >= 1):
            raise invalid("side_head_dim", self.side_head_dim, "None or an integer >= 1", owner)
        if self.dtl_inject_from is not None and not (is_integer(self.dtl_inject_from) and self.dtl_inject_from >= 0):
            raise invalid("dtl_inject_from", self.dtl_inject_from, "None or an integer >= 0", owner)
        if not (is_integer(self.dtl_conv_kernel) and self.dtl_conv_kernel >= 1 and self.dtl_conv_kernel % 2 == 1):
            raise invalid("dtl_conv_kernel", self.dtl_conv_kernel, "an odd integer >= 1", owner)
        if not (is_real(self.gate_temperature) and self.gate_temperature > 0):
            raise invalid("gate_temperature", self.gate_temperature, "a finite float > 0", owner)
        if not is_real(self.gate_init):
            raise invalid("gate_init", self.gate_init, "a finite float", owner)
        if self.side_network.startswith("dtl") and self.side_layers is not None:
            raise invalid("side_layers", self.side_layers, "None with side_network='dtl' or 'dtl+' (DTL reads every block)", owner)
        if self.side_layers is not None and (
            not isinstance(self.side_layers, (list, tuple)) or len(self.side_layers) == 0 or not all(is_integer(i) for i in self.side_layers)
        ):
            raise invalid("side_layers", self.side_layers, "None or a non-empty list of layer indices", owner)
        if self.layers_path is not None and not isinstance(self.layers_path, str):
            raise invalid("layers_path", self.layers_path, "None or a dotted module path (a string)", owner)


@dataclass
class MDPDConfig(SideNetworkSettings, PeftConfig):
    """Configuration of an MDPD adapter ("Masked Dual Path Distillation", mdpd-paper.txt, section 3).

    A ladder side network of width ``hidden_size / reduction_factor`` runs beside the frozen encoder.
    Training distils both ways: backbone features teach the side network (Eq. 1, 2/4 for shallow
    layers, Eq. 5-7 for deep layers) and the side network's logits teach the backbone's own task head
    and ``target_modules`` (Eq. 3). ``merge_and_unload()`` then drops the side network ("fading") and
    returns the plain transformers model.

    Loss convention (the paper gives sums, Eq. 2-7): every distillation term is a squared error
    *summed* over channels and over real (non-padding) tokens, then *averaged over the batch*, as in
    Masked Generative Distillation. The paper's weights (appendix B) are calibrated for this
    reduction; with a mean-reduced MSE they would be ~10^5 times too small.

    The side network's own settings (``side_network``, ``reduction_factor``, ``side_layers``, ``side_init``, the
    ladder's gates, DTL's rank, injection block and kernel, ``layers_path``, ``norm_position``) are documented in
    ``SideNetworkSettings``.

    Args:
        deep_layers_start: Index of the first backbone layer distilled by masked generation; the
            side layers before it are "shallow" (imitation). The paper does not state the split;
            ``None`` takes the second half as deep (its Table C: layers 7-12 of 12).
        mask_ratio: lambda in Eq. 5, the share of real side tokens replaced by the mask token in
            deep layers. In [0, 1); 0.5 is the paper's best.
        aligner_rank: d, the rank of the bottleneck aligner phi (Eq. 1) and the hidden channel count
            of the generation block G (Eq. 7; the paper leaves G's width open). ``None`` uses
            ``min(16, side width)``. Integer in [1, side width].
        shallow_loss_weight: Weight of the shallow-layer imitation loss (Eq. 4). Paper: 4e-5.
        deep_loss_weight: Weight of the deep-layer masked generation loss (Eq. 7). Paper: 6e-5.
        logits_loss_weight: Weight of the side-to-backbone logits loss (Eq. 3). Paper: 1e-4.
        backbone_task_loss_weight: Weight of the task loss on the backbone's own logits, beside Eq. 3.
            **Not in the paper** (there the backbone learns from Eq. 3 alone); 0.0 gives the paper's
            recipe. Measured on all-MiniLM-L6-v2 + Rotten Tomatoes (3,000 sentences, 2 epochs): with
            Eq. 3 alone the backbone head regresses to the side logits' mean and the faded model
            predicts one class (test 0.585 = majority); with this term at 1.0 it reaches 0.773 with
            the side network at 0.787. Default 1.0.
        fading: How the backbone's trainables (LayerNorm copies, head) get their gradients, which
            decides training memory. The backbone task loss and Eq. 3 act on the backbone's logits, so
            reaching its LayerNorms means backpropagating through the frozen backbone.
            ``"backprop"``: plainly, storing every backbone activation (the paper as written).
            ``"checkpointed"``: recomputing each backbone layer in backward (transformers' gradient
            checkpointing, non-reentrant, turned on at the first training forward), so only layer inputs
            are stored; same gradients, one more backbone forward per step. ``"head_only"``: the
            LayerNorm copies stay frozen and only the head learns, so nothing backpropagates through the
            backbone (the floor: a probe taught by the side network). ``"block_local"`` (ours): each encoder layer's LayerNorms learn from a
            target local to that layer, a linear probe of the layer's pooled output (dropped at fading)
            trained with the task loss; the backward runs inside the forward, right after each layer,
            and the layer's output goes on detached, so no backward crosses more than one layer and
            nothing is stored or recomputed (the head learns from the final output). Sequence-level tasks,
            one process, no fp16 loss scaling or gradient checkpointing. Measured (docs/research/fading.md):
            0.93x LoRA's step time at 0.22x its memory, but faded test 0.736 on MiniLM (0.816 default).
            ``merge_and_unload()`` returns a plain model in every case. Default
            ``"checkpointed"``: measured at BERT-base, batch 16 x 128 (CPU tensor bytes), peak training
            memory 0.19x LoRA's (LoRA with gradient checkpointing: 0.18x) against 1.14x for ``"backprop"``,
            for 1.57x LoRA's step time against 1.09x (docs/research/fading.md); the gradients are those of ``"backprop"``.
        fading_layers: k: with ``target_modules=None``, train the LayerNorms of only the last k encoder
            layers (and any norm after the layers, such as a pre-norm model's final LayerNorm) instead of
            every LayerNorm. Fading's backward then stops k layers deep: the layers before run without
            autograd, so they are neither stored nor recomputed. ``None`` trains every LayerNorm.
            Integer in [1, number of layers]; not combinable with explicit ``target_modules``.
        fading_interval: n: the LayerNorm copies learn on every n-th training forward pass (the first,
            the (n+1)-th, ...); on the others they are held still, so the backbone runs without autograd
            and nothing is stored, recomputed or backpropagated through it, while the side network, the
            distillation and the head (from the backbone's pooled features) learn as usual. The step
            time then falls from the full cost toward ``"head_only"``'s, on average; peak memory stays
            the learning pass's. Ours, not the paper's. Counted in forward passes (micro-batches under
            gradient accumulation) since the model was built or loaded. Measured (docs/research/fading.md):
            BERT-base 16 x 128, step time 1.01x / 0.86x LoRA's for n = 2 / 3 (1.47x every pass);
            all-MiniLM-L6-v2 + Rotten Tomatoes, faded test 0.807 / 0.788 (every pass 0.816, 3 seeds).
            Integer >= 1; 1 (default) lets them learn on every pass.
        target_modules: Backbone modules whose parameters the faded model may change. They are
            trained as adapter-held copies and written back by ``merge_and_unload()``. ``None``
            selects every LayerNorm of the model (the paper: LayerNorm scale and shift). Same
            matching rules as LoRA's ``target_modules`` (names, suffixes or a regex).
        modules_to_save: Modules trained in full and saved with the adapter; the backbone's task
            head belongs here (PEFT adds ``classifier``/``score`` for ``task_type="SEQ_CLS"``; set it
            yourself for ``task_type=None``, e.g. ``["classifier"]`` for image classification).
        eval_path: The path that predicts in eval mode: ``"backbone"`` (what ships after fading) or
            ``"side"`` (the side network's head, for comparison).
        nonfinite_loss: What a training forward pass does when a loss term is NaN or inf (a NaN input row, an
            overflowing weight), before ``backward()`` or the optimizer can write it into the weights:
            ``"raise"`` (default) raises ``FloatingPointError`` naming the term and the training pass;
            ``"skip"`` warns likewise and returns a loss whose value is the non-finite total (so the Trainer's
            ``logging_nan_inf_filter`` leaves it out of the logged loss) but whose gradients are exactly zero, and
            ``MDPDTrainer`` then skips that optimizer step on every process (no update, no weight decay, no
            AdamW state change). In a plain loop with ``"skip"``, check ``output.mdpd_skipped`` before stepping.
        base_model_shape: Filled in when the adapter is attached and saved with it: the base model's number of
            layers, their widths and the task head's outputs. Attaching a saved adapter to a model of another
            shape (``PeftModel.from_pretrained`` into a model with other ``num_labels``) then fails before the
            model is changed. Leave it ``None``.
    """

    deep_layers_start: Optional[int] = field(
        default=None, metadata={"help": "First layer distilled by masked generation; None = second half."}
    )
    mask_ratio: float = field(default=0.5, metadata={"help": "Masked share of real side tokens (lambda, Eq. 5)."})
    aligner_rank: Optional[int] = field(
        default=None, metadata={"help": "Rank d of the aligner phi (Eq. 1) and width of G; None = min(16, side width)."}
    )
    shallow_loss_weight: float = field(default=4e-5, metadata={"help": "Weight of Eq. 4 (sum over tokens/channels, mean over batch)."})
    deep_loss_weight: float = field(default=6e-5, metadata={"help": "Weight of Eq. 7 (sum over tokens/channels, mean over batch)."})
    logits_loss_weight: float = field(default=1e-4, metadata={"help": "Weight of Eq. 3 (sum over logits, mean over batch)."})
    backbone_task_loss_weight: float = field(
        default=1.0, metadata={"help": "Weight of the task loss on the backbone's own logits (0.0 = the paper: Eq. 3 alone)."}
    )
    fading: str = field(default="checkpointed", metadata={"help": f"How the backbone's trainables learn: one of {FADINGS}."})
    fading_layers: Optional[int] = field(
        default=None, metadata={"help": "Train the LayerNorms of only the last k encoder layers (and after them); None = all."}
    )
    fading_interval: int = field(default=1, metadata={"help": "The LayerNorm copies learn on every n-th training forward pass."})
    target_modules: Optional[Union[list[str], str]] = field(
        default=None, metadata={"help": "Backbone modules fading may change; None = every LayerNorm."}
    )
    modules_to_save: Optional[list[str]] = field(
        default=None, metadata={"help": "Modules trained in full and saved, e.g. the task head."}
    )
    eval_path: str = field(default="backbone", metadata={"help": f"Path predicting in eval mode: one of {EVAL_PATHS}."})
    nonfinite_loss: str = field(
        default="raise", metadata={"help": f"On a NaN/inf loss term in training: one of {NONFINITE_LOSS_ACTIONS}."}
    )
    base_model_shape: Optional[dict[str, Any]] = field(
        default=None, metadata={"help": "Filled in at attach time (layers, widths, head outputs); checked when reloading."}
    )

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = PeftType.MDPD
        if isinstance(self.target_modules, list):
            self.target_modules = set(self.target_modules)
        self.check_values()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str, subfolder: Optional[str] = None, **kwargs) -> "MDPDConfig":
        """PEFT's, remembering a local folder: attaching the adapter then checks its weights file first."""
        config = super().from_pretrained(pretrained_model_name_or_path, subfolder=subfolder, **kwargs)
        folder = os.path.join(str(pretrained_model_name_or_path), subfolder or "")
        if os.path.isdir(folder):
            config._weights_folder = folder
        return config

    @property
    def loss_weights(self) -> dict[str, float]:
        """Each term's weight in the combined training loss, by the names of ``mdpd_losses``."""
        return {
            "task": 1.0,
            "shallow": self.shallow_loss_weight,
            "deep": self.deep_loss_weight,
            "logits": self.logits_loss_weight,
            "backbone_task": self.backbone_task_loss_weight,
        }

    def check_saved_weights(self) -> None:
        """For a config loaded from a local folder: that folder holds adapter weights that can be read. A missing or
        truncated file (a save cut short) would otherwise fail only after PEFT changed the model."""
        folder = getattr(self, "_weights_folder", None)
        if folder is None or os.path.isfile(os.path.join(folder, WEIGHTS_NAME)):
            return
        path = os.path.join(folder, SAFETENSORS_WEIGHTS_NAME)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{folder} holds adapter_config.json but no {SAFETENSORS_WEIGHTS_NAME}: it is not a complete MDPD adapter folder.")
        try:
            with safe_open(path, framework="pt") as weights:
                weights.keys()
        except (SafetensorError, OSError) as error:
            raise ValueError(f"{path} cannot be read ({error}): the file is damaged or was cut short; save the adapter again.") from error

    def check_values(self) -> None:
        """Checks the settings that do not depend on the model (the rest are checked by the tuner)."""
        self.check_side_network_values()
        for name, allowed in (("eval_path", EVAL_PATHS), ("fading", FADINGS), ("nonfinite_loss", NONFINITE_LOSS_ACTIONS)):
            if not isinstance(getattr(self, name), str) or getattr(self, name) not in allowed:
                raise invalid(name, getattr(self, name), f"one of {allowed}")
        for name, optional in (("fading_interval", False), ("aligner_rank", True), ("fading_layers", True)):
            value = getattr(self, name)
            if not (optional and value is None) and not (is_integer(value) and value >= 1):
                raise invalid(name, value, "None or an integer >= 1" if optional else "an integer >= 1")
        if self.deep_layers_start is not None and not (is_integer(self.deep_layers_start) and self.deep_layers_start >= 0):
            raise invalid("deep_layers_start", self.deep_layers_start, "None or an integer >= 0")
        if not (is_real(self.mask_ratio) and 0.0 <= self.mask_ratio < 1.0):
            raise invalid("mask_ratio", self.mask_ratio, "a float in [0, 1)")
        for name in LOSS_WEIGHTS:
            if not (is_real(getattr(self, name)) and getattr(self, name) >= 0):
                raise invalid(name, getattr(self, name), "a finite float >= 0")
        if self.fading == "head_only" and self.fading_interval != 1:
            raise invalid("fading_interval", self.fading_interval, '1 with fading="head_only" (no LayerNorm learns)')
        if self.target_modules is not None and not isinstance(self.target_modules, (str, set)):
            raise invalid("target_modules", self.target_modules, "None, a list of module names or a regex string")
