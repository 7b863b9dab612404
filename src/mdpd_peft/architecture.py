"""Finding an encoder's parts by generic rules: its layer list, widths, activation and norm placement.

Every rule reads the model's config or introspects its modules; nothing is keyed on the model type.
What a rule cannot find is named in the error together with the ``MDPDConfig`` field that overrides it.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .config import MDPDConfig, invalid

# LayerNorm names that mark a pre-norm block (the norm reads the block input): ViT/DeiT/BEiT/Swin,
# CLIP/SigLIP, DINOv2, ModernBERT. Post-norm blocks (BERT, RoBERTa, DistilBERT, DeBERTa) name theirs
# "LayerNorm", "sa_layer_norm", "output_layer_norm".
PRE_NORM_NAMES = ("layernorm_before", "layer_norm1", "norm1", "ln_1", "input_layernorm", "attn_norm")


def first_config_value(config, names: tuple[str, ...], default=None):
    """The first of ``names`` the config defines (families spell the same quantity differently)."""
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return default


def backbone_modules(module: nn.Module):
    """``named_modules`` of the backbone as the model defines it: adapter copies skipped, wrappers seen through."""
    for name, child in module.named_modules():
        if "mdpd_copies" not in name.split("."):
            yield name.removesuffix(".base_layer").removesuffix("base_layer"), child


def is_norm(module: nn.Module) -> bool:
    """LayerNorm-like: torch's LayerNorm or a model's own class named *LayerNorm / *RMSNorm."""
    name = type(module).__name__
    return isinstance(module, nn.LayerNorm) or name.endswith("LayerNorm") or name.endswith("RMSNorm")


@dataclass
class EncoderMap:
    """What the side network needs to know about the backbone encoder."""

    layers_path: str  # dotted path of the nn.ModuleList of encoder layers
    num_layers: int
    hidden_size: int  # D_B
    num_heads: int
    intermediate_size: int
    activation: str  # key of transformers.activations.ACT2FN
    norm_position: str  # "pre" or "post"
    norm_eps: float
    is_vision: bool  # tokens are a patch grid (plus prefix tokens such as CLS)

    def layers(self, model: nn.Module) -> nn.ModuleList:
        return model.get_submodule(self.layers_path)


def find_layer_list(model: nn.Module, num_layers: int | None) -> str:
    """The first ModuleList of identical modules whose length is the config's number of layers."""
    candidates = [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList) and len(module) > 0 and len({type(m) for m in module}) == 1
    ]
    for name in candidates:
        if num_layers is None or len(model.get_submodule(name)) == num_layers:
            return name
    raise ValueError(
        f"MDPD could not find the encoder's layer list in {type(model).__name__} (config number of layers: "
        f"{num_layers}; ModuleLists found: {candidates or 'none'}). Set MDPDConfig.layers_path to the dotted path "
        "of the nn.ModuleList that holds the encoder layers, e.g. 'bert.encoder.layer'."
    )


def map_encoder(model: nn.Module, config: MDPDConfig) -> EncoderMap:
    """Map ``model`` for ``config``; raises ValueError naming the field to set where a rule fails."""
    model_config = model.config
    num_layers = first_config_value(model_config, ("num_hidden_layers", "n_layers", "num_layers"))
    if config.layers_path is not None:
        try:
            layers = model.get_submodule(config.layers_path)
        except AttributeError:
            layers = None
        if not isinstance(layers, nn.ModuleList):
            raise invalid("layers_path", config.layers_path, f"the dotted path of an nn.ModuleList in {type(model).__name__}")
        layers_path = config.layers_path
    else:
        layers_path = find_layer_list(model, num_layers)
        layers = model.get_submodule(layers_path)

    first_layer = layers[0]
    linears = [m for m in first_layer.modules() if isinstance(m, nn.Linear)]
    hidden_size = first_config_value(model_config, ("hidden_size", "dim", "d_model"))
    if hidden_size is None and linears:
        hidden_size = linears[0].in_features
    num_heads = first_config_value(model_config, ("num_attention_heads", "n_heads", "num_heads"))
    if hidden_size is None or num_heads is None:
        raise ValueError(
            f"MDPD could not read the hidden size and number of attention heads of {type(model).__name__} from its "
            "config (looked for hidden_size/dim/d_model and num_attention_heads/n_heads/num_heads)."
        )
    intermediate_size = first_config_value(model_config, ("intermediate_size", "hidden_dim", "ffn_dim"), 4 * hidden_size)
    activation = first_config_value(model_config, ("hidden_act", "activation"), "gelu")
    if not isinstance(activation, str):
        activation = "gelu"

    norms = [(name, m) for name, m in backbone_modules(first_layer) if is_norm(m)]
    if config.norm_position is not None:
        norm_position = config.norm_position
    else:
        pre = any(name.rsplit(".", 1)[-1].lower() in PRE_NORM_NAMES for name, _ in norms)
        norm_position = "pre" if pre else "post"
    norm_eps = getattr(norms[0][1], "eps", None) if norms else None
    if norm_eps is None:
        norm_eps = first_config_value(model_config, ("layer_norm_eps", "layer_norm_epsilon", "norm_eps"), 1e-12)

    return EncoderMap(
        layers_path=layers_path,
        num_layers=len(layers),
        hidden_size=int(hidden_size),
        num_heads=int(num_heads),
        intermediate_size=int(intermediate_size),
        activation=activation,
        norm_position=norm_position,
        norm_eps=float(norm_eps),
        is_vision=getattr(model, "main_input_name", "input_ids") == "pixel_values",
    )


@dataclass
class BlockParts:
    """The backbone block's modules in the roles a standard transformer block has (for pruned init)."""

    query: nn.Linear
    key: nn.Linear
    value: nn.Linear
    attn_out: nn.Linear
    ffn_in: nn.Linear
    ffn_out: nn.Linear
    attn_norm: nn.Module
    ffn_norm: nn.Module


def find_block_parts(layer: nn.Module, hidden_size: int, intermediate_size: int) -> BlockParts:
    """Roles by shape and registration order: the first three D->D Linears are q, k, v, the last one the
    attention output (DeBERTa's relative-position projections sit between); D->I is the FFN input, I->D its output; the two norms are the attention's then the FFN's.
    """
    linears = [m for m in layer.modules() if isinstance(m, nn.Linear)]
    square = [m for m in linears if (m.in_features, m.out_features) == (hidden_size, hidden_size)]
    ffn_in = [m for m in linears if (m.in_features, m.out_features) == (hidden_size, intermediate_size)]
    ffn_out = [m for m in linears if (m.in_features, m.out_features) == (intermediate_size, hidden_size)]
    norms = [m for _, m in backbone_modules(layer) if is_norm(m) and getattr(m, "weight", None) is not None]
    if len(square) < 4 or len(ffn_in) != 1 or len(ffn_out) != 1 or len(norms) != 2 or intermediate_size == hidden_size:
        raise ValueError(
            f"MDPDConfig.side_init='pruned' needs a standard transformer block (separate q/k/v/output projections "
            f"of size {hidden_size}, one FFN {hidden_size}->{intermediate_size}->{hidden_size}, two LayerNorms), but "
            f"{type(layer).__name__} has {len(square)} square Linears, {len(ffn_in)}+{len(ffn_out)} FFN Linears and "
            f"{len(norms)} norms. Use side_init='random' for this model."
        )
    return BlockParts(*square[:3], square[-1], ffn_in[0], ffn_out[0], norms[0], norms[1])
