"""Every PEFT task wrapper trains, keeps frozen weights frozen and fades to itself; the generic mapping rules (the family matrix is in test_families.py)."""

import pytest
import torch

from mdpd_peft import MDPDConfig
from mdpd_peft.architecture import map_encoder
from conftest import check_train_and_fade, image_batch, text_batch, tiny_mdpd_model, tiny_text_model, tiny_vit


def test_vit_with_task_type_none_runs_through_hooks_only():
    """PeftModel calls the base model directly for task_type=None; the hooks still train the side network."""
    config = MDPDConfig(reduction_factor=4, modules_to_save=["classifier"])
    peft_model = check_train_and_fade(tiny_vit(), config, image_batch())
    encoder = peft_model.base_model.mdpd_encoders["default"]
    assert (encoder.norm_position, encoder.is_vision) == ("pre", True)


def test_token_classification():
    batch = text_batch()
    batch["labels"] = torch.randint(0, 3, batch["input_ids"].shape)
    batch["labels"][0, 10:] = -100
    peft_model = check_train_and_fade(tiny_text_model(task="token_cls"), MDPDConfig(task_type="TOKEN_CLS", reduction_factor=4), batch)
    assert peft_model.base_model.mdpd_side["default"].head.out_features == 3  # PEFT names the head only after building


def test_question_answering():
    batch = text_batch()
    del batch["labels"]
    batch["start_positions"] = torch.tensor([1, 2, 3, 4, 5, 6])
    batch["end_positions"] = torch.tensor([2, 3, 4, 5, 6, 7])
    config = MDPDConfig(task_type="QUESTION_ANS", reduction_factor=4, modules_to_save=["qa_outputs"])
    check_train_and_fade(tiny_text_model(task="qa", num_labels=2), config, batch)


def test_feature_extraction_distils_features_only():
    from transformers import BertModel

    base = BertModel(tiny_text_model().config).eval()
    batch = text_batch()
    del batch["labels"]
    peft_model = check_train_and_fade(base, MDPDConfig(task_type="FEATURE_EXTRACTION", reduction_factor=4), batch)
    assert peft_model.base_model.mdpd_side["default"].head is None


@pytest.mark.parametrize(
    "family, layers_path, norm_position",
    [
        ("bert", "bert.encoder.layer", "post"),
        ("roberta", "roberta.encoder.layer", "post"),
        ("distilbert", "distilbert.transformer.layer", "post"),
        ("deberta-v2", "deberta.encoder.layer", "post"),
    ],
)
def test_generic_mapping(family, layers_path, norm_position):
    encoder = map_encoder(tiny_text_model(family), MDPDConfig())
    assert (encoder.layers_path, encoder.norm_position, encoder.num_layers, encoder.hidden_size) == (layers_path, norm_position, 4, 64)
    assert (encoder.num_heads, encoder.intermediate_size, encoder.is_vision) == (4, 128, False)


def test_pruned_init_copies_backbone_channels_and_random_does_not():
    pruned = tiny_mdpd_model().base_model
    block = pruned.mdpd_side["default"].blocks[0]
    backbone_query = tiny_text_model().bert.encoder.layer[0].attention.self.query.weight
    # every pruned row is a sub-row of the backbone's weight: its values occur in the matching backbone row
    rows_found = [any(set(row.tolist()) <= set(brow.tolist()) for brow in backbone_query) for row in block.query.weight.detach()]
    assert all(rows_found)
    random = tiny_mdpd_model(side_init="random").base_model
    assert not torch.equal(random.mdpd_side["default"].blocks[0].query.weight, block.query.weight)


def test_config_overrides_the_generic_rules():
    config = MDPDConfig(task_type="SEQ_CLS", reduction_factor=4, layers_path="bert.encoder.layer", norm_position="pre")
    peft_model = check_train_and_fade(tiny_text_model(), config, text_batch())
    encoder = peft_model.base_model.mdpd_encoders["default"]
    assert (encoder.layers_path, encoder.norm_position) == ("bert.encoder.layer", "pre")
    assert peft_model.base_model.mdpd_side["default"].blocks[0].norm_position == "pre"


@pytest.mark.parametrize("family", ["dinov2", "beit", "vit"])
def test_pruned_init_folds_layer_scale_into_the_output_projections(family):
    """DINOv2 and BEiT scale each residual branch per channel; the side block has no such scale, so the attention
    output and FFN output projections it copies are the backbone's times that scale (ViT has none: unscaled)."""
    import transformers

    from mdpd_peft.architecture import find_block_parts

    torch.manual_seed(0)
    shape = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=16, patch_size=4)
    configs = {
        "dinov2": lambda: transformers.Dinov2Model(transformers.Dinov2Config(**shape, mlp_ratio=2)),
        "beit": lambda: transformers.BeitModel(transformers.BeitConfig(**shape, intermediate_size=128, layer_scale_init_value=0.1)),
        "vit": lambda: transformers.ViTModel(transformers.ViTConfig(**shape, intermediate_size=128)),
    }
    layer = next(module for module in configs[family]().modules() if type(module).__name__.endswith("Layer"))  # the first block
    scales = {"dinov2": lambda: [layer.layer_scale1.lambda1, layer.layer_scale2.lambda1], "beit": lambda: [layer.lambda_1, layer.lambda_2]}
    scales = scales.get(family, lambda: [torch.ones(64)] * 2)()
    with torch.no_grad():
        for scale in scales:
            if isinstance(scale, torch.nn.Parameter):  # the model's own: away from its initial value
                scale.uniform_(0.1, 5.0)
    linears = [module for module in layer.modules() if isinstance(module, torch.nn.Linear)]
    attention_output = [m for m in linears if (m.in_features, m.out_features) == (64, 64)][-1]
    ffn_output = next(m for m in linears if m.out_features == 64 and m.in_features == 128)
    parts = find_block_parts(layer, 64, 128)
    for (weight, bias), linear, scale in zip((parts.attn_out, parts.ffn_out), (attention_output, ffn_output), scales):
        torch.testing.assert_close(weight, scale[:, None] * linear.weight)
        torch.testing.assert_close(bias, scale * linear.bias)
