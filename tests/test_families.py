"""The encoder family matrix: each family, with ``MDPDConfig()`` defaults (only the task named), trains,
keeps its frozen weights, fades to its own class, and the saved faded folder loads with plain transformers
where ``mdpd_peft`` cannot be imported; so does each of its transformers task heads.

Every family is a tiny random config (4 layers of width 64 where the family allows). The reloads run in
one subprocess for the whole matrix, so the matrix costs one interpreter start, not one per family.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import logging

import pytest
import torch
import transformers
from peft import get_peft_model

from mdpd_peft import MDPDConfig
from mdpd_peft.architecture import map_encoder
from conftest import VOCAB, check_train_and_fade, image_batch, load_without_mdpd_peft, text_batch

LAYERS = dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128)
TEXT = dict(vocab_size=VOCAB, num_labels=3, max_position_embeddings=64)
IMAGE = dict(image_size=16, patch_size=4, num_channels=1)


@dataclass
class Family:
    config: Callable[[], transformers.PretrainedConfig]  # a tiny config of the family
    model_class: str  # the transformers class to build and to reload with
    mdpd: dict  # the task's MDPDConfig arguments; everything else is the default

    @property
    def is_text(self) -> bool:
        return "ForSequenceClassification" in self.model_class

    @property
    def output(self) -> str:
        return "logits" if "For" in self.model_class else "last_hidden_state"


TEXT_CLASSIFIER = dict(task_type="SEQ_CLS")
IMAGE_CLASSIFIER = dict(modules_to_save=["classifier"])
FAMILIES = {
    "bert": Family(lambda: transformers.BertConfig(**LAYERS, **TEXT), "BertForSequenceClassification", TEXT_CLASSIFIER),
    "roberta": Family(
        lambda: transformers.RobertaConfig(**LAYERS, **TEXT, pad_token_id=1), "RobertaForSequenceClassification", TEXT_CLASSIFIER
    ),
    "xlm-roberta": Family(
        lambda: transformers.XLMRobertaConfig(**LAYERS, **TEXT, pad_token_id=1), "XLMRobertaForSequenceClassification", TEXT_CLASSIFIER
    ),
    "electra": Family(
        lambda: transformers.ElectraConfig(**LAYERS, **TEXT, embedding_size=32), "ElectraForSequenceClassification", TEXT_CLASSIFIER
    ),
    "distilbert": Family(
        lambda: transformers.DistilBertConfig(dim=64, n_layers=4, n_heads=4, hidden_dim=128, **TEXT),
        "DistilBertForSequenceClassification",
        TEXT_CLASSIFIER,
    ),
    "deberta": Family(lambda: transformers.DebertaConfig(**LAYERS, **TEXT), "DebertaForSequenceClassification", TEXT_CLASSIFIER),
    "deberta-v2": Family(lambda: transformers.DebertaV2Config(**LAYERS, **TEXT), "DebertaV2ForSequenceClassification", TEXT_CLASSIFIER),
    "modernbert": Family(
        lambda: transformers.ModernBertConfig(
            **LAYERS, **TEXT, pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2
        ),
        "ModernBertForSequenceClassification",
        TEXT_CLASSIFIER,
    ),
    "mpnet": Family(lambda: transformers.MPNetConfig(**LAYERS, **TEXT), "MPNetForSequenceClassification", TEXT_CLASSIFIER),
    # one layer group runs all four layers: the layers share weights
    "albert": Family(
        lambda: transformers.AlbertConfig(**LAYERS, **TEXT, embedding_size=32), "AlbertForSequenceClassification", TEXT_CLASSIFIER
    ),
    "vit": Family(lambda: transformers.ViTConfig(**LAYERS, **IMAGE, num_labels=4), "ViTForImageClassification", IMAGE_CLASSIFIER),
    "deit": Family(lambda: transformers.DeiTConfig(**LAYERS, **IMAGE, num_labels=4), "DeiTForImageClassification", IMAGE_CLASSIFIER),
    "beit": Family(lambda: transformers.BeitConfig(**LAYERS, **IMAGE, num_labels=4), "BeitForImageClassification", IMAGE_CLASSIFIER),
    "dinov2": Family(
        lambda: transformers.Dinov2Config(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, **IMAGE, num_labels=4),
        "Dinov2ForImageClassification",
        IMAGE_CLASSIFIER,
    ),
    # three stages of widths 16 -> 32 -> 64 -> 64 over grids 8x8 -> 4x4 -> 2x2 -> 2x2
    "swin": Family(
        lambda: transformers.SwinConfig(
            image_size=16, patch_size=2, num_channels=1, embed_dim=16, depths=[1, 1, 1], num_heads=[2, 2, 4], window_size=2, num_labels=4
        ),
        "SwinForImageClassification",
        IMAGE_CLASSIFIER,  # side_init="auto" initialises randomly here (test below)
    ),
    "clip-vision": Family(lambda: transformers.CLIPVisionConfig(**LAYERS, **IMAGE), "CLIPVisionModel", {}),
    "siglip-vision": Family(lambda: transformers.SiglipVisionConfig(**LAYERS, **IMAGE), "SiglipVisionModel", {}),
}


def build(family: Family) -> torch.nn.Module:
    torch.manual_seed(0)
    return getattr(transformers, family.model_class)(family.config()).eval()


@pytest.fixture(scope="module")
def matrix(tmp_path_factory) -> dict[str, str]:
    """Train and fade every family, save each faded model, reload them all without mdpd_peft.

    Returns per family the reloaded class name, or the error raised (in process or in the reload).
    """
    root = tmp_path_factory.mktemp("families")
    results, checks = {}, []
    for name, family in FAMILIES.items():
        try:
            batch = text_batch() if family.is_text else image_batch()
            if family.output == "last_hidden_state":
                del batch["labels"]
            peft_model = check_train_and_fade(build(family), MDPDConfig(**family.mdpd), batch)
            faded = peft_model.base_model.model
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            with torch.no_grad():
                expected = faded(**inputs)[family.output]
            faded.save_pretrained(root / name)
            checks.append(dict(folder=root / name, auto_class=family.model_class, batch=inputs, expected=expected, output=family.output))
        except Exception as error:  # reported by the family's own test
            results[name] = f"error: {type(error).__name__}: {error}"
    reloaded = load_without_mdpd_peft(checks)
    return {**results, **{name: reloaded[str(root / name)] for name in FAMILIES if name not in results}}


@pytest.mark.parametrize("name", FAMILIES)
def test_family_trains_fades_and_reloads_without_mdpd_peft(name, matrix):
    assert matrix[name] == FAMILIES[name].model_class


def test_shared_weight_layers_count_as_calls():
    """ALBERT runs its one layer group num_hidden_layers times: four side layers, each fed by a call."""
    model = build(FAMILIES["albert"])
    encoder = map_encoder(model, MDPDConfig())
    assert (encoder.layers_path, encoder.num_layers, len(encoder.layers(model))) == ("albert.encoder.albert_layer_groups", 4, 1)
    assert all(encoder.layer_module(model, i) is encoder.layers(model)[0] for i in range(4))


def test_swin_stages_map_to_their_widths_and_pruned_init_names_the_fix():
    model = build(FAMILIES["swin"])
    encoder = map_encoder(model, MDPDConfig())
    assert (encoder.num_layers, encoder.embedding_width, encoder.layer_widths, encoder.hidden_size) == (3, 16, (32, 64, 64), 64)
    with pytest.raises(ValueError, match=r"side_init='pruned' is invalid: side_init must be 'random' for a model whose layers change width"):
        check_train_and_fade(model, MDPDConfig(side_init="pruned", **IMAGE_CLASSIFIER), image_batch())


@pytest.mark.parametrize("name, pruned", [("swin", False), ("vit", True)])
def test_auto_side_init_prunes_standard_blocks_and_says_why_it_does_not(name, pruned, caplog):
    """``side_init="auto"`` (the default) prunes where it can; elsewhere one log line names the reason."""
    model = build(FAMILIES[name])
    with caplog.at_level(logging.WARNING, logger="mdpd_peft"):
        side = get_peft_model(model, MDPDConfig(**IMAGE_CLASSIFIER)).base_model.mdpd_side["default"]
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("mdpd_peft")]
    if pruned:
        assert lines == []
        random = get_peft_model(build(FAMILIES[name]), MDPDConfig(side_init="random", **IMAGE_CLASSIFIER)).base_model
        assert not torch.equal(side.blocks[0].query.weight, random.mdpd_side["default"].blocks[0].query.weight)
    else:
        assert len(lines) == 1 and "side_init='auto' initialises the ladder randomly" in lines[0] and "change width" in lines[0]


def task_head_cases() -> list[tuple[str, str]]:
    """Each family's transformers task heads beyond the matrix's: token classification and extractive QA for
    text; for the CLIP and SigLIP towers, ``...ForImageClassification`` (whose config keeps the tower's in
    ``vision_config``)."""
    cases = []
    for name, family in FAMILIES.items():
        prefix = family.model_class.split("For")[0].removesuffix("VisionModel")
        if family.is_text:
            cases += [(name, f"{prefix}ForTokenClassification"), (name, f"{prefix}ForQuestionAnswering")]
        elif family.output == "last_hidden_state":
            cases.append((name, f"{prefix}ForImageClassification"))
    return cases


def task_head_model(name: str, class_name: str) -> torch.nn.Module:
    config = FAMILIES[name].config()
    if "QuestionAnswering" in class_name:
        config.num_labels = 2  # start and end
    if "ImageClassification" in class_name:  # the tower inside the composite config, with a tiny text tower
        composite = getattr(transformers, class_name.replace("ForImageClassification", "Config"))
        text = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37)
        config = composite(vision_config=config.to_dict(), text_config=text, num_labels=4)
    torch.manual_seed(0)
    return getattr(transformers, class_name)(config).eval()


@pytest.mark.parametrize("name, class_name", task_head_cases())
def test_task_heads_train_and_fade_with_defaults(name, class_name):
    model = task_head_model(name, class_name)
    if "ImageClassification" in class_name:
        config, batch = MDPDConfig(**IMAGE_CLASSIFIER), image_batch()
    else:
        batch = text_batch()
        del batch["labels"]
        if "TokenClassification" in class_name:
            config = MDPDConfig(task_type="TOKEN_CLS")
            batch["labels"] = torch.randint(0, 3, batch["input_ids"].shape, generator=torch.Generator().manual_seed(0))
        else:
            config = MDPDConfig(task_type="QUESTION_ANS")
            batch.update(start_positions=torch.tensor([1, 2, 0, 3, 4, 1]), end_positions=torch.tensor([3, 5, 2, 6, 4, 9]))
    faded = check_train_and_fade(model, config, batch).base_model.model
    assert type(faded).__name__ == class_name
