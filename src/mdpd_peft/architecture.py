"""Finding an encoder's parts by generic rules: its layer list, widths, activation and norm placement.

Every rule reads the model's config or introspects its modules; nothing is keyed on the model type.
What a rule cannot find is named in the error together with the ``MDPDConfig`` field that overrides it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from .config import MDPDConfig, invalid

# LayerNorm names that mark a pre-norm block (the norm reads the block input): ViT/DeiT/BEiT/Swin,
# CLIP/SigLIP, DINOv2, ModernBERT. Post-norm blocks (BERT, RoBERTa, DistilBERT, DeBERTa) name theirs
# "LayerNorm", "sa_layer_norm", "output_layer_norm".
HIDDEN_SIZE_NAMES = ("hidden_size", "dim", "d_model")
LAYER_COUNT_NAMES = ("num_hidden_layers", "n_layers", "num_layers")
PRE_NORM_NAMES = ("layernorm_before", "layer_norm1", "norm1", "ln_1", "input_layernorm", "attn_norm", "mlp_norm")


def first_config_value(config, names: tuple[str, ...], default=None):
    """The first of ``names`` the config defines (families spell the same quantity differently)."""
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return default


def encoder_config(model_config, width: int):
    """The config that describes the encoder: the model's own, or the sub-config whose hidden size is the
    layers' width (``CLIPForImageClassification`` keeps its vision tower's head count in ``vision_config``)."""
    sub_configs = [getattr(model_config, name, None) for name in getattr(model_config, "sub_configs", {})]
    for candidate in (model_config, *(c for c in sub_configs if c is not None)):
        if first_config_value(candidate, HIDDEN_SIZE_NAMES) == width:
            return candidate
    return model_config


def backbone_modules(module: nn.Module):
    """``named_modules`` of the backbone as the model defines it: adapter copies skipped, wrappers seen through."""
    for name, child in module.named_modules():
        if "mdpd_copies" not in name.split("."):
            yield name.removesuffix(".base_layer").removesuffix("base_layer"), child


def head_outputs(model: nn.Module, head_names: list[str] | set[str] | None) -> int | None:
    """Output size of the task head, or None: the last Linear of the *last* ``modules_to_save`` module found
    (the head comes after, e.g., BERT's ``pooler`` in module order)."""
    outputs = None
    for name, module in model.named_modules():
        if head_names and name.rsplit(".", 1)[-1] in head_names:
            linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
            if linears:
                outputs = linears[-1].out_features
    return outputs


def is_norm(module: nn.Module) -> bool:
    """LayerNorm-like: torch's LayerNorm or a model's own class named *LayerNorm / *RMSNorm."""
    name = type(module).__name__
    return isinstance(module, nn.LayerNorm) or name.endswith("LayerNorm") or name.endswith("RMSNorm")


@dataclass
class EncoderMap:
    """What the side network needs to know about the backbone encoder.

    Layers are counted in calls per forward pass: a model whose layers share weights (ALBERT) runs
    each module of its layer list several times, and ``layer_module`` says which one runs call i.
    """

    layers_path: str  # dotted path of the nn.ModuleList of encoder layers
    num_layers: int  # layer calls per forward pass
    hidden_size: int  # D_B, the width of the last layer's output
    num_heads: int
    intermediate_size: int
    activation: str  # key of transformers.activations.ACT2FN
    norm_position: str  # "pre" or "post"
    norm_eps: float
    is_vision: bool  # tokens are a patch grid (plus prefix tokens such as CLS)
    embedding_width: int  # width of the first layer's input
    layer_widths: tuple[int, ...]  # output width of each layer call (Swin's stages widen; others keep D_B)

    def layers(self, model: nn.Module) -> nn.ModuleList:
        return model.get_submodule(self.layers_path)

    def layer_module(self, model: nn.Module, index: int) -> nn.Module:
        """The module that computes layer call ``index`` (ALBERT's layer groups run consecutive calls)."""
        layers = self.layers(model)
        return layers[index * len(layers) // self.num_layers]

    @property
    def uniform_width(self) -> bool:
        return set(self.layer_widths) == {self.embedding_width}


def find_layer_list(model: nn.Module, num_layers: int | None) -> str:
    """The first ModuleList of identical modules whose length is the config's number of layers; failing
    that, the first whose length divides it (layers that share weights, as ALBERT's layer groups)."""
    candidates = [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList)
        and len(module) > 0
        and len({type(m) for m in module}) == 1
        and any(isinstance(m, nn.Linear) for m in module.modules())
    ]
    lengths = {name: len(model.get_submodule(name)) for name in candidates}
    for name in candidates:
        if num_layers is None or lengths[name] == num_layers:
            return name
    for name in candidates:
        if num_layers % lengths[name] == 0:
            return name
    raise ValueError(
        f"MDPD could not find the encoder's layer list in {type(model).__name__} (config number of layers: "
        f"{num_layers}; ModuleLists found: {candidates or 'none'}). Set MDPDConfig.layers_path to the dotted path "
        "of the nn.ModuleList that holds the encoder layers, e.g. 'bert.encoder.layer'."
    )


def linears_of(module: nn.Module) -> list[nn.Linear]:
    return [m for m in module.modules() if isinstance(m, nn.Linear)]


def ffn_width(layer: nn.Module, width: int) -> int | None:
    """The FFN's inner width, read from the module: the input width of the layer's last Linear that writes the
    layer's width from another (configs may not say it: ``mlp_ratio``, SwiGLU's rounded width)."""
    writers = [m for m in linears_of(layer) if m.out_features == width and m.in_features != width]
    return writers[-1].in_features if writers else None


def map_encoder(model: nn.Module, config: MDPDConfig) -> EncoderMap:
    """Map ``model`` for ``config``; raises ValueError naming the field to set where a rule fails."""
    num_layers = first_config_value(model.config, LAYER_COUNT_NAMES)
    if config.layers_path is not None:
        try:
            layers = model.get_submodule(config.layers_path)
        except AttributeError:
            layers = None
        if not isinstance(layers, nn.ModuleList):
            raise invalid("layers_path", config.layers_path, f"the dotted path of an nn.ModuleList in {type(model).__name__}", type(config).__name__)
        layers_path = config.layers_path
    else:
        layers_path = find_layer_list(model, num_layers)
        layers = model.get_submodule(layers_path)
    # A layer's output width is that of its last Linear (the FFN output; Swin's patch merging); its
    # input width that of its first (the query projection).
    layer_linears = [linears_of(layer) for layer in layers]
    if not all(layer_linears):
        raise ValueError(
            f"MDPD found no nn.Linear in the layers at {layers_path!r} of {type(model).__name__}. Set "
            "MDPDConfig.layers_path to the nn.ModuleList that holds the encoder's transformer layers."
        )
    module_widths = [linears[-1].out_features for linears in layer_linears]
    model_config = encoder_config(model.config, module_widths[-1])
    num_layers = first_config_value(model_config, LAYER_COUNT_NAMES)
    if num_layers is None or num_layers % len(layers) != 0:
        num_layers = len(layers)
    layer_widths = tuple(module_widths[i * len(layers) // num_layers] for i in range(num_layers))
    hidden_size = first_config_value(model_config, HIDDEN_SIZE_NAMES, layer_widths[-1])
    num_heads = first_config_value(model_config, ("num_attention_heads", "n_heads", "num_heads"))
    if isinstance(num_heads, (list, tuple)):  # per stage (Swin): the deepest stage's, whose width is D_B
        num_heads = num_heads[-1]
    if num_heads is None:
        raise ValueError(
            f"MDPD could not read the number of attention heads of {type(model).__name__} from its config "
            "(looked for num_attention_heads/n_heads/num_heads)."
        )
    intermediate_size = ffn_width(layers[-1], layer_widths[-1])
    if intermediate_size is None:
        intermediate_size = first_config_value(model_config, ("intermediate_size", "hidden_dim", "ffn_dim"))
    if intermediate_size is None:
        intermediate_size = int(first_config_value(model_config, ("mlp_ratio",), 4) * hidden_size)
    activation = first_config_value(model_config, ("hidden_act", "activation", "hidden_activation"), "gelu")
    if not isinstance(activation, str):
        activation = "gelu"

    norms = [(name, m) for name, m in backbone_modules(layers[-1]) if is_norm(m)]
    if getattr(config, "norm_position", None) is not None:  # DTLConfig has no such field
        norm_position = config.norm_position
    else:
        pre = any(name.rsplit(".", 1)[-1].lower() in PRE_NORM_NAMES for name, _ in norms)
        norm_position = "pre" if pre else "post"
    norm_eps = getattr(norms[0][1], "eps", None) if norms else None
    if norm_eps is None:
        norm_eps = first_config_value(model_config, ("layer_norm_eps", "layer_norm_epsilon", "norm_eps"), 1e-12)

    return EncoderMap(
        layers_path=layers_path,
        num_layers=num_layers,
        hidden_size=int(hidden_size),
        num_heads=int(num_heads),
        intermediate_size=int(intermediate_size),
        activation=activation,
        norm_position=norm_position,
        norm_eps=float(norm_eps),
        is_vision=getattr(model, "main_input_name", "input_ids") == "pixel_values",
        embedding_width=layer_linears[0][0].in_features,
        layer_widths=layer_widths,
    )


Projection = tuple[torch.Tensor, Optional[torch.Tensor]]  # weight (out, in) and bias (out,) of a Linear, or rows of one


def projection(linear: nn.Linear, rows: slice = slice(None)) -> Projection:
    return linear.weight[rows], None if linear.bias is None else linear.bias[rows]


@dataclass
class BlockParts:
    """The backbone block's weights in the roles a standard transformer block has (for pruned init)."""

    query: Projection
    key: Projection
    value: Projection
    attn_out: Projection
    ffn_in: Projection
    ffn_out: Projection
    attn_norm: Optional[nn.Module]  # None where the block has not exactly two norms
    ffn_norm: Optional[nn.Module]


class PruningNotApplicable(ValueError):
    """The backbone's blocks are not the standard ones pruned initialisation reads (``side_init="auto"`` then
    initialises randomly; ``"pruned"`` raises it)."""


def find_block_parts(layer: nn.Module, hidden_size: int, intermediate_size: int) -> BlockParts:
    """Roles by shape and registration order.

    - q, k, v: the first three D->D Linears, or the thirds of a fused D->3D one that comes first
      (ModernBERT's ``Wqkv``, DeBERTa's ``in_proj``);
    - attention output: the last D->D Linear (DeBERTa-v2's relative-position projections sit between);
    - FFN input, after it: the D->I Linear, or the first half of a gated D->2I one (ModernBERT's GLU
      computes act(first half) * second half; the side FFN keeps the first);
    - FFN output: the I->D Linear after it;
    - norms: the block's two LayerNorms with weights, the attention's then the FFN's. A block with
      another count (ModernBERT's first layer has no attention norm) leaves the side norms at identity;
    - layer scale (DINOv2, BEiT): the two per-channel scales of the residual branches, folded into the
      attention output and FFN output projections, since the side block has none.
    """
    d, i = hidden_size, intermediate_size
    linears = linears_of(layer)
    square = [n for n, m in enumerate(linears) if (m.in_features, m.out_features) == (d, d)]
    fused = bool(linears) and (linears[0].in_features, linears[0].out_features) == (d, 3 * d)
    if len(square) >= 4:
        qkv = [projection(linears[n]) for n in square[:3]]
    elif fused and square:
        qkv = [projection(linears[0], slice(k * d, (k + 1) * d)) for k in range(3)]
    else:
        qkv = []
    after_attention = linears[square[-1] + 1 :] if square else []
    ffn_in = [m for m in after_attention if m.in_features == d and m.out_features in (i, 2 * i)]
    ffn_out = [m for m in after_attention if (m.in_features, m.out_features) == (i, d)]
    if not qkv or len(ffn_in) != 1 or len(ffn_out) != 1 or i == d:
        raise PruningNotApplicable(
            f"MDPDConfig.side_init='pruned' needs a standard transformer block (q/k/v projections of size {d}, "
            f"separate or fused, an output projection, one FFN {d}->{i}->{d}), but {type(layer).__name__} has "
            f"{len(square)} {d}x{d} Linears and {len(ffn_in)}+{len(ffn_out)} FFN Linears. "
            "Use side_init='random' for this model."
        )
    norms = [m for _, m in backbone_modules(layer) if is_norm(m) and getattr(m, "weight", None) is not None]
    attn_norm, ffn_norm = norms if len(norms) == 2 else (None, None)
    attn_out, ffn_out = projection(linears[square[-1]]), projection(ffn_out[0])
    scales = layer_scales(layer, d)
    if len(scales) == 2:  # the side block has no layer scale: fold each into the projection that feeds it
        attn_out, ffn_out = scaled(attn_out, scales[0]), scaled(ffn_out, scales[1])
    return BlockParts(*qkv, attn_out, projection(ffn_in[0], slice(0, i)), ffn_out, attn_norm, ffn_norm)


def layer_scales(layer: nn.Module, hidden_size: int) -> list[torch.Tensor]:
    """Per-channel scales of the block's two residual branches (layer scale: DINOv2's ``layer_scale1/2.lambda1``,
    BEiT's ``lambda_1/2``): the (D,) parameters held by modules that are neither Linears nor norms, in registration
    order (the attention branch's first)."""
    return [
        parameter
        for _, module in backbone_modules(layer)
        if not isinstance(module, nn.Linear) and not is_norm(module)
        for parameter in module.parameters(recurse=False)
        if parameter.shape == (hidden_size,)
    ]


def scaled(output: Projection, scale: torch.Tensor) -> Projection:
    """A projection followed by a per-channel scale, as one projection: rows of W and b times the scale."""
    weight, bias = output
    return scale[:, None] * weight, None if bias is None else scale * bias
