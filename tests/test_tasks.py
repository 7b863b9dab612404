"""Encoder tasks beyond single-label classification: multi-label, regression, and sentence embeddings
served by sentence-transformers from the faded model."""

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from peft import get_peft_model
from torch import nn
from transformers import AutoModel, AutoTokenizer

from mdpd_peft import MDPDConfig
from conftest import check_train_and_fade, text_batch, tiny_text_model, train_steps

MULTI_LABEL, REGRESSION = "multi_label_classification", "regression"
NUM_LABELS = 4

# The loss transformers' *ForSequenceClassification heads use for each problem type; the side head must
# be trained on the same one.
TASK_LOSSES = {
    MULTI_LABEL: F.binary_cross_entropy_with_logits,
    REGRESSION: lambda logits, labels: F.mse_loss(logits.squeeze(-1), labels),
}


def sequence_task(problem_type: str, declared: bool = True):
    """A tiny BERT and a batch for ``problem_type``: multi-label targets are 0/1 floats (B, C), regression
    targets STS-B-like similarity scores in [0, 5] (B,). ``declared=False`` leaves ``config.problem_type``
    unset, as most users do: the transformers head infers it from ``num_labels`` and the labels' dtype in
    its forward pass, before MDPD's hook reads it."""
    num_labels = 1 if problem_type == REGRESSION else NUM_LABELS
    model = tiny_text_model(num_labels=num_labels)
    model.config.problem_type = problem_type if declared else None
    batch = text_batch()
    generator = torch.Generator().manual_seed(2)
    size = len(batch["input_ids"])
    if problem_type == REGRESSION:
        batch["labels"] = 5 * torch.rand(size, generator=generator)
    else:
        batch["labels"] = torch.randint(0, 2, (size, NUM_LABELS), generator=generator).float()
    return model, batch


@pytest.mark.parametrize("problem_type", [MULTI_LABEL, REGRESSION])
def test_sequence_task_trains_and_fades(problem_type):
    model, batch = sequence_task(problem_type)
    peft_model = check_train_and_fade(model, MDPDConfig(task_type="SEQ_CLS", reduction_factor=4), batch)
    assert peft_model.base_model.mdpd_side["default"].head.out_features == model.config.num_labels


@pytest.mark.parametrize("declared", [True, False], ids=["declared", "inferred"])
@pytest.mark.parametrize("problem_type", [MULTI_LABEL, REGRESSION])
def test_side_and_backbone_learn_the_task_loss_of_the_problem_type(problem_type, declared):
    """The side task term is BCE of the side logits for multi-label and MSE for regression, as is the
    backbone's own term: the two heads are trained on one objective. The side logits are read off the
    side head by a forward hook during the training forward pass."""
    model, batch = sequence_task(problem_type, declared)
    peft_model = get_peft_model(model, MDPDConfig(task_type="SEQ_CLS", reduction_factor=4))
    side_logits = []
    peft_model.base_model.mdpd_side["default"].head.register_forward_hook(lambda module, args, output: side_logits.append(output))
    peft_model.train()
    output = peft_model(**batch)
    loss = TASK_LOSSES[problem_type]
    assert side_logits[0].shape == (len(batch["labels"]), model.config.num_labels)
    torch.testing.assert_close(output.mdpd_losses["task"], loss(side_logits[0], batch["labels"]))
    torch.testing.assert_close(output.mdpd_losses["backbone_task"], loss(output.logits, batch["labels"]))


# Paraphrase pairs (0-1, 2-3, ...) of different lengths, so the batch is padded.
PARAPHRASES = [
    "A man is playing a guitar on stage.",
    "Someone performs a song with a guitar in front of an audience.",
    "The cat sleeps.",
    "A kitten is napping.",
    "Stock markets fell sharply on Monday after the announcement.",
    "Shares dropped a lot at the start of the week.",
]


def mean_pooled(token_embeddings: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean over real tokens: sentence-transformers' ``Pooling`` with ``pooling_mode_mean_tokens``."""
    weights = attention_mask.unsqueeze(-1).to(token_embeddings.dtype)
    return (token_embeddings * weights).sum(dim=1) / weights.sum(dim=1)


class WithEmbeddingObjective(nn.Module):
    """MDPD's own terms plus an in-batch contrastive loss (multiple negatives ranking) on the backbone's
    mean-pooled sentence embeddings of paraphrase pairs: how a sentence-embedding model is trained.

    MDPD alone gives feature extraction nothing to learn on the backbone path (no head, so no Eq. 3 and
    no backbone task loss): the faded model would be the base model, and the copied folder would pass the
    check below without the faded weights ever being saved.
    """

    def __init__(self, peft_model: nn.Module):
        super().__init__()
        self.peft_model = peft_model

    def forward(self, **batch):
        output = self.peft_model(**batch)
        embeddings = F.normalize(mean_pooled(output.last_hidden_state, batch["attention_mask"]), dim=-1)
        anchors, positives = embeddings[0::2], embeddings[1::2]
        contrastive = F.cross_entropy(20.0 * anchors @ positives.T, torch.arange(len(anchors)))
        output["loss"] = output.loss + contrastive
        return output


def sentence_transformer_modules(folder: Path) -> list[str]:
    """The module class names that sentence-transformers chains for ``folder`` (from its modules.json)."""
    return [module["type"].rsplit(".", 1)[-1] for module in json.loads((folder / "modules.json").read_text())]


def sentence_transformer_embeddings(folder: Path) -> torch.Tensor:
    """The embeddings of ``PARAPHRASES`` that sentence-transformers serves from ``folder``, on CPU."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(folder), device="cpu").encode(PARAPHRASES, convert_to_tensor=True)


def test_faded_feature_extractor_serves_as_a_sentence_transformer(minilm_path, tmp_path):
    """The faded MiniLM, saved over the weights of a copy of its sentence-transformers folder, encodes
    exactly what the adapter's backbone path computed, pooled and normalised as the folder says."""
    source = Path(minilm_path)
    modules = sentence_transformer_modules(source)
    assert modules[:2] == ["Transformer", "Pooling"]
    assert json.loads((source / "1_Pooling" / "config.json").read_text())["pooling_mode_mean_tokens"]
    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    batch = dict(tokenizer(PARAPHRASES, padding=True, return_tensors="pt"))
    assert not batch["attention_mask"].all()

    torch.manual_seed(0)
    base = AutoModel.from_pretrained(minilm_path)
    before = {name: value.clone() for name, value in base.state_dict().items()}
    peft_model = get_peft_model(base, MDPDConfig(task_type="FEATURE_EXTRACTION"))
    output = train_steps(WithEmbeddingObjective(peft_model), batch, steps=2, lr=3e-3)
    assert set(output.mdpd_losses) == {"shallow", "deep"} and torch.isfinite(output.loss)

    peft_model.eval()
    with torch.no_grad():
        expected = mean_pooled(peft_model(**batch).last_hidden_state, batch["attention_mask"])
    if "Normalize" in modules:
        expected = F.normalize(expected, dim=-1)
    faded = peft_model.merge_and_unload()
    changed = {name for name, value in faded.state_dict().items() if not torch.equal(value, before[name])}
    assert changed and all("LayerNorm" in name for name in changed)

    folder = tmp_path / "faded-sentence-model"
    shutil.copytree(source, folder)
    faded.save_pretrained(folder)
    encoded = sentence_transformer_embeddings(folder)
    torch.testing.assert_close(encoded, expected, atol=1e-5, rtol=1e-4)
    # the faded weights were loaded, not the pretrained ones copied with the folder
    assert not torch.allclose(encoded, sentence_transformer_embeddings(source), atol=1e-4)
