"""Side-task bundles: several tasks of one encoder saved, loaded, pushed and served through SideTaskPipeline."""

import json
import shutil
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
import transformers
import yaml
from huggingface_hub import HfApi
from huggingface_hub.hf_api import RepoUrl
from peft import LoraConfig, PeftModel, get_peft_model
from PIL import Image
from transformers import AutoTokenizer

from conftest import VOCAB, text_batch
from mdpd_peft import SideTaskConfig, SideTaskPipeline, load_side_tasks, push_side_tasks_to_hub, save_side_tasks
from mdpd_peft.side_tasks import bundle

TASKS = {
    "sentiment": dict(id2label={0: "neg", 1: "pos"}),
    "topic": dict(id2label={0: "sport", 1: "politics", 2: "science"}, problem_type="multi_label_classification", pooling="attention"),
    "stars": dict(problem_type="regression"),
    "ner": dict(id2label={0: "O", 1: "PER", 2: "LOC"}, problem_type="token_classification"),
}
METRICS = {"sentiment": {"accuracy": 0.81}, "topic": {"f1": 0.5}}


def tiny_encoder(seed: int = 0, vocab_size: int = VOCAB):
    torch.manual_seed(seed)
    config = transformers.BertConfig(
        vocab_size=vocab_size, hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128, max_position_embeddings=64
    )
    return transformers.BertModel(config).eval()


def task_config(name: str) -> SideTaskConfig:
    return SideTaskConfig(reduction_factor=4, **TASKS[name])


def tasks_model(names, encoder=None):
    """Every task of ``names`` on one encoder, all active, with heads whose gates are not at their initial value."""
    encoder = encoder if encoder is not None else tiny_encoder()
    first, *rest = names
    model = get_peft_model(encoder, task_config(first), adapter_name=first)
    for name in rest:
        model.add_adapter(name, task_config(name))
    torch.manual_seed(1)
    for task in model.base_model.kept_tasks.values():  # as if trained: the saved weights are not the initial ones
        task.head.gate_logits.data.normal_()
        if task.head.pooling == "attention":
            task.head.pooling_query.data.normal_()
    model.base_model.set_adapter(list(names))
    return model.eval()


def task_logits(model, batch=None, **kwargs):
    batch = batch if batch is not None else text_batch()
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **kwargs).task_logits


def assert_same_logits(actual: dict, expected: dict, names):
    for name in names:
        assert torch.equal(actual[name], expected[name]), name


# ------------------------------------------------------------------------------------------- save and load


def test_save_load_round_trip_is_bit_identical(tmp_path):
    model = tasks_model(["sentiment", "topic", "stars", "ner"])
    expected = task_logits(model)
    save_side_tasks(model, tmp_path / "bundle", metrics=METRICS)
    assert {path.name for path in (tmp_path / "bundle").iterdir()} == {"sentiment", "topic", "stars", "ner", "README.md"}

    loaded = load_side_tasks(tiny_encoder(), tmp_path / "bundle")  # a path, or a str, or a Hub id
    assert sorted(loaded.base_model.active_adapters) == sorted(TASKS)
    assert not any(parameter.requires_grad for parameter in loaded.parameters())
    assert_same_logits(task_logits(loaded), expected, TASKS)

    some = load_side_tasks(tiny_encoder(), str(tmp_path / "bundle"), tasks=["ner", "sentiment"], is_trainable=True)
    assert some.base_model.tasks == ["ner", "sentiment"]
    assert all(parameter.requires_grad for parameter in some.base_model.kept_tasks.parameters())
    assert_same_logits(task_logits(some), expected, ["ner", "sentiment"])


def test_a_default_task_saved_at_the_root_loads_with_the_others(tmp_path):
    model = get_peft_model(tiny_encoder(), task_config("sentiment"))  # adapter "default": PEFT saves it at the root
    model.add_adapter("topic", task_config("topic"))
    model.base_model.set_adapter(["default", "topic"])
    expected = task_logits(model)
    save_side_tasks(model, tmp_path / "bundle")
    loaded = load_side_tasks(tiny_encoder(), str(tmp_path / "bundle"))
    assert sorted(loaded.base_model.tasks) == ["default", "topic"]
    assert_same_logits(task_logits(loaded), expected, ["default", "topic"])


def test_each_task_folder_loads_alone_and_predicts_what_the_bundle_does(tmp_path):
    model = tasks_model(["sentiment", "topic", "ner"])
    expected = task_logits(model)
    save_side_tasks(model, tmp_path / "bundle")
    for name in ["sentiment", "topic", "ner"]:
        alone = PeftModel.from_pretrained(tiny_encoder(), str(tmp_path / "bundle" / name), adapter_name=name).eval()
        with torch.no_grad():
            batch = text_batch()
            logits = alone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        assert torch.equal(logits, expected[name]), name


def test_adding_or_deleting_a_task_never_changes_the_others():
    model = tasks_model(["sentiment", "topic"])
    before = task_logits(model)
    model.add_adapter("stars", task_config("stars"))
    model.base_model.set_adapter(["sentiment", "topic", "stars"])
    with_stars = task_logits(model)
    assert_same_logits(with_stars, before, ["sentiment", "topic"])
    model.delete_adapter("topic")
    model.base_model.set_adapter(["sentiment", "stars"])
    assert_same_logits(task_logits(model), with_stars, ["sentiment", "stars"])


def test_saving_again_leaves_no_deleted_task_behind(tmp_path):
    model = tasks_model(["sentiment", "topic"])
    save_side_tasks(model, tmp_path / "bundle")
    model.delete_adapter("topic")
    save_side_tasks(model, tmp_path / "bundle")
    assert load_side_tasks(tiny_encoder(), str(tmp_path / "bundle")).base_model.tasks == ["sentiment"]


# ----------------------------------------------------------------------------------------------- bad input


def test_unknown_task_names_fail_listing_the_known_tasks(tmp_path):
    model = tasks_model(["sentiment", "topic"])
    save_side_tasks(model, tmp_path / "bundle")
    with pytest.raises(ValueError, match=r"\['x'\].*holds the tasks \['sentiment', 'topic'\]"):
        load_side_tasks(tiny_encoder(), str(tmp_path / "bundle"), tasks=["x"])
    with pytest.raises(ValueError, match=r"unknown task\(s\) \['x'\].*has the tasks \['sentiment', 'topic'\]"):
        task_logits(model, tasks=["x"])
    with pytest.raises(ValueError, match=r"unknown task\(s\) \['x'\].*has the tasks \['sentiment', 'topic'\]"):
        SideTaskPipeline(model, None, tasks=["x"])
    with pytest.raises(ValueError, match=r"metrics name task\(s\) \['x'\].*has the tasks \['sentiment', 'topic'\]"):
        save_side_tasks(model, tmp_path / "other", metrics={"x": {"accuracy": 1.0}})


def test_a_folder_that_is_no_bundle_fails_saying_what_it_holds(tmp_path):
    (tmp_path / "weights.bin").write_text("")
    with pytest.raises(ValueError, match=r"no side-task bundle.*\['weights.bin'\]"):
        load_side_tasks(tiny_encoder(), str(tmp_path))


def test_an_adapter_of_another_method_in_the_folder_fails(tmp_path):
    save_side_tasks(tasks_model(["sentiment"]), tmp_path / "bundle")
    lora = get_peft_model(tiny_encoder(), LoraConfig(target_modules=["query"]), adapter_name="other")
    lora.save_pretrained(tmp_path / "bundle")
    with pytest.raises(ValueError, match=r"no side tasks: \{'other': 'LORA'\}"):
        load_side_tasks(tiny_encoder(), str(tmp_path / "bundle"))


def test_a_task_of_another_encoder_fails_before_loading(tmp_path):
    save_side_tasks(tasks_model(["sentiment"]), tmp_path / "bundle")
    with pytest.raises(ValueError, match=r"trained on another encoder: its weights differ"):
        load_side_tasks(tiny_encoder(seed=1), str(tmp_path / "bundle"))


def test_mismatched_label_sets_fail_in_the_config():
    with pytest.raises(ValueError, match=r"id2label.*0\.\.2 \(num_labels=3\)"):
        SideTaskConfig(num_labels=3, id2label={0: "a", 1: "b"})


def test_a_label_set_that_does_not_match_the_saved_head_fails_naming_the_task(tmp_path):
    save_side_tasks(tasks_model(["sentiment", "topic"]), tmp_path / "bundle")
    path = tmp_path / "bundle" / "sentiment" / "adapter_config.json"
    config = json.loads(path.read_text())
    path.write_text(json.dumps({**config, "id2label": {"0": "a", "1": "b", "2": "c"}, "num_labels": 3}))
    with pytest.raises(RuntimeError, match=r"size mismatch for base_model\.kept_tasks\.sentiment\.head\.classifier"):
        load_side_tasks(tiny_encoder(), tmp_path / "bundle")


# ------------------------------------------------------------------------------------------ card and Hub


def card_of(folder: Path) -> tuple[dict, str]:
    card = (folder / "README.md").read_text()
    return yaml.safe_load(card.split("---")[1]), card


def test_card_lists_tasks_labels_side_networks_and_metrics(tmp_path):
    encoder = tiny_encoder()
    encoder.config._name_or_path = "org/tiny-encoder"
    save_side_tasks(tasks_model(["sentiment", "topic", "stars"], encoder), tmp_path / "bundle", metrics=METRICS)
    metadata, card = card_of(tmp_path / "bundle")
    assert metadata["library_name"] == "peft" and metadata["base_model"] == "org/tiny-encoder"
    assert {"side-task", "mdpd"} <= set(metadata["tags"]) and metadata["metrics"] == ["accuracy", "f1"]
    for name in ["sentiment", "topic", "stars"]:
        assert f"### `{name}`" in card
    assert "labels: `neg`, `pos`" in card and "labels: `sport`, `politics`, `science`" in card and "labels: one score" in card
    assert "measured: accuracy 0.8100" in card and "measured: f1 0.5000" in card and "measured: not measured" in card
    assert "side network: `ladder`" in card and "(width 16)" in card and "trainable parameters:" in card
    assert 'encoder_id = "org/tiny-encoder"' in card and "load_side_tasks(" in card and "SideTaskPipeline(model, processor)" in card
    assert 'subfolder="sentiment"' in card and "one forward pass of the encoder" in card


def test_card_names_no_base_model_for_an_encoder_built_in_memory(tmp_path):
    save_side_tasks(tasks_model(["sentiment"]), tmp_path / "bundle")
    metadata, _ = card_of(tmp_path / "bundle")
    assert "base_model" not in metadata


def test_push_uploads_every_task_and_the_card_and_loads_back(tmp_path, monkeypatch):
    uploads = []

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        uploads.append({"repo_id": repo_id, **kwargs})
        shutil.copytree(folder_path, tmp_path / "hub" / repo_id)  # what the Hub would now serve
        return "https://huggingface.co/user/tasks/commit/0"

    model = tasks_model(["sentiment", "topic"])
    expected = task_logits(model)
    with mock.patch.object(HfApi, "create_repo", return_value=RepoUrl("https://huggingface.co/user/tasks")) as create_repo, mock.patch.object(HfApi, "upload_folder", upload_folder):
        push_side_tasks_to_hub(model, "user/tasks", metrics=METRICS, private=True)
    assert create_repo.call_args.args[0] == "user/tasks" and create_repo.call_args.kwargs["exist_ok"] and create_repo.call_args.kwargs["private"]
    (upload,) = uploads
    assert "*adapter_config.json" in upload["delete_patterns"]  # a task deleted since an earlier push goes
    pushed = tmp_path / "hub" / "user" / "tasks"
    for name in ["sentiment", "topic"]:
        assert {"adapter_config.json", "adapter_model.safetensors"} <= {path.name for path in (pushed / name).iterdir()}
    _, card = card_of(pushed)
    assert "### `sentiment`" in card and "accuracy 0.8100" in card and "### `topic`" in card and "f1 0.5000" in card

    monkeypatch.setattr(bundle, "snapshot_download", lambda repo_id: str(tmp_path / "hub" / repo_id))
    assert_same_logits(task_logits(load_side_tasks(tiny_encoder(), "user/tasks")), expected, ["sentiment", "topic"])


# --------------------------------------------------------------------------------------------- pipeline

TEXTS = ["A wonderful film.", "The match ended in a draw after extra time.", "Dull."]


def assert_same_predictions(actual, expected):
    """Equal labels and tokens, scores to float precision (padding changes the last bits)."""
    if isinstance(expected, dict):
        assert actual.keys() == expected.keys()
        for key in expected:
            assert_same_predictions(actual[key], expected[key])
    elif isinstance(expected, list):
        assert len(actual) == len(expected)
        for a, e in zip(actual, expected):
            assert_same_predictions(a, e)
    else:
        assert actual == (pytest.approx(expected, abs=1e-5) if isinstance(expected, float) else expected)


@pytest.fixture(scope="module")
def tokenizer(minilm_path):
    return AutoTokenizer.from_pretrained(minilm_path)


def test_pipeline_on_texts_gives_labels_and_scores_per_task(tokenizer):
    model = tasks_model(["sentiment", "topic", "stars", "ner"], tiny_encoder(vocab_size=len(tokenizer)))
    pipe = SideTaskPipeline(model, tokenizer, batch_size=2)
    results = pipe(TEXTS, threshold=0.0)
    assert len(results) == len(TEXTS) and all(set(result) == set(TASKS) for result in results)

    encoded = tokenizer(TEXTS, padding=True, return_tensors="pt")
    expected = task_logits(model, encoded)
    for i, result in enumerate(results):
        sentiment = expected["sentiment"][i].softmax(-1)
        assert result["sentiment"] == {"label": ["neg", "pos"][int(sentiment.argmax())], "score": pytest.approx(float(sentiment.max()), abs=1e-5)}
        assert [p["label"] for p in result["topic"]] == [["sport", "politics", "science"][j] for j in expected["topic"][i].argsort(descending=True)]
        assert result["stars"] == {"score": pytest.approx(float(expected["stars"][i]), abs=1e-5)} and type(result["stars"]["score"]) is float
        tokens = tokenizer.tokenize(TEXTS[i])
        assert [p["token"] for p in result["ner"]] == tokens and {p["label"] for p in result["ner"]} <= {"O", "PER", "LOC"}

    assert_same_predictions(pipe(TEXTS[0], threshold=0.0), results[0])  # one input in, one dict out (unpadded)
    assert pipe(TEXTS[0], threshold=1.0)["topic"] == []
    best_two = pipe(TEXTS[0], top_k=2)["sentiment"]
    assert [p["label"] for p in best_two] == [["neg", "pos"][j] for j in expected["sentiment"][0].argsort(descending=True)]
    assert sum(p["score"] for p in best_two) == pytest.approx(1.0)


def test_pipeline_runs_the_encoder_once_per_batch_for_every_task(tokenizer):
    model = tasks_model(["sentiment", "topic"], tiny_encoder(vocab_size=len(tokenizer)))
    passes = []
    model.base_model.model.embeddings.register_forward_hook(lambda *args: passes.append(1))
    SideTaskPipeline(model, tokenizer, batch_size=2)(TEXTS)
    assert len(passes) == 2


def test_pipeline_call_predicts_the_tasks_it_names_from_one_pass(tokenizer):
    model = tasks_model(["sentiment", "topic"], tiny_encoder(vocab_size=len(tokenizer)))
    pipe = SideTaskPipeline(model, tokenizer, batch_size=len(TEXTS))
    both = pipe(TEXTS, threshold=0.0)
    passes = []
    model.base_model.model.embeddings.register_forward_hook(lambda *args: passes.append(1))
    only_topic = pipe(TEXTS, threshold=0.0, tasks=["topic"])
    assert len(passes) == 1 and all(set(result) == {"topic"} for result in only_topic)
    for one, all_tasks in zip(only_topic, both):
        assert_same_predictions(one["topic"], all_tasks["topic"])
    with pytest.raises(ValueError, match=r"unknown task\(s\) \['stars'\].*\['sentiment', 'topic'\]"):
        pipe(TEXTS, tasks=["stars"])


def test_pipeline_predicts_each_item_with_its_own_options_from_one_pass(tokenizer):
    model = tasks_model(["sentiment", "topic", "stars", "ner"], tiny_encoder(vocab_size=len(tokenizer)))
    pipe = SideTaskPipeline(model, tokenizer)
    items = TEXTS + ["word " * 100]
    options = [{"tasks": ["sentiment"], "top_k": 2}, {"tasks": ["topic"], "threshold": 0.1}, {}, {"tasks": "stars", "threshold": 0.9}]
    passes = []
    model.base_model.model.embeddings.register_forward_hook(lambda *args: passes.append(1))
    each = pipe.predict_each(items, options)
    assert len(passes) == 1
    assert_same_predictions(each, [pipe(items, **option)[i] for i, option in enumerate(options)])
    assert pipe.truncated(items) == [3] and pipe.truncated(TEXTS) == []
    assert pipe.predict_each([], []) == []
    with pytest.raises(ValueError, match=r"options: expected one dict of options per item \(4\), got 1"):
        pipe.predict_each(items, options[:1])
    with pytest.raises(ValueError, match=r"top_k=0"):
        pipe.predict_each(items[:1], [{"top_k": 0}])


def test_pipeline_truncates_to_the_encoders_positions(tokenizer):
    model = tasks_model(["ner"], tiny_encoder(vocab_size=len(tokenizer)))
    (result,) = SideTaskPipeline(model, tokenizer)(["word " * 200])
    assert len(result["ner"]) == 64 - 2  # max_position_embeddings, less [CLS] and [SEP]


def test_pipeline_loads_a_saved_bundle_with_its_tokenizer(tokenizer, tmp_path):
    model = tasks_model(["sentiment", "topic"], tiny_encoder(vocab_size=len(tokenizer)))
    expected = SideTaskPipeline(model, tokenizer)(TEXTS)
    save_side_tasks(model, tmp_path / "bundle", processor=tokenizer)
    assert "SideTaskPipeline.from_pretrained(" in card_of(tmp_path / "bundle")[1]
    pipe = SideTaskPipeline.from_pretrained(tiny_encoder(vocab_size=len(tokenizer)), str(tmp_path / "bundle"))
    assert pipe(TEXTS) == expected


def test_pipeline_on_images(tmp_path):
    torch.manual_seed(0)
    config = transformers.ViTConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128)
    vit = transformers.ViTModel(config, add_pooling_layer=False).eval()
    labels = {0: "cat", 1: "dog", 2: "bird"}
    model = get_peft_model(vit, SideTaskConfig(reduction_factor=4, pooling="first", id2label=labels), adapter_name="animal")
    processor = transformers.ViTImageProcessor(size={"height": 16, "width": 16})
    images = [Image.fromarray(np.random.default_rng(i).integers(0, 255, (20, 24, 3), dtype=np.uint8)) for i in range(3)]

    pipe = SideTaskPipeline(model, processor, batch_size=2, device="cpu")
    results = pipe(images, top_k=3)
    assert [len(result["animal"]) for result in results] == [3, 3, 3]
    assert all({p["label"] for p in result["animal"]} == set(labels.values()) for result in results)
    single = pipe(images[1])
    assert_same_predictions(single, {"animal": results[1]["animal"][0]})

    save_side_tasks(model, tmp_path / "bundle", processor=processor)
    torch.manual_seed(0)
    loaded = SideTaskPipeline.from_pretrained(transformers.ViTModel(config, add_pooling_layer=False), str(tmp_path / "bundle"))
    assert isinstance(loaded.processor, transformers.ViTImageProcessor | transformers.ViTImageProcessorFast)
    assert loaded(images[1])["animal"]["label"] == single["animal"]["label"]


def test_pipeline_refuses_token_classification_on_images_and_other_input_types(tokenizer):
    model = tasks_model(["ner"])
    with pytest.raises(ValueError, match=r"\['ner'\] label tokens.*texts"):
        SideTaskPipeline(model, transformers.ViTImageProcessor())
    with pytest.raises(TypeError, match="give a text or a list of texts"):
        SideTaskPipeline(model, tokenizer)([1, 2])
    with pytest.raises(ValueError, match=r"top_k=0"):
        SideTaskPipeline(model, tokenizer)("text", top_k=0)


def test_pipeline_of_a_bundle_saved_without_a_processor_says_how_to_give_one(tmp_path):
    save_side_tasks(tasks_model(["sentiment"]), tmp_path / "bundle")
    with pytest.raises(ValueError, match=r"holds no processor.*save_side_tasks\(\.\.\., processor=\.\.\.\)"):
        SideTaskPipeline.from_pretrained(tiny_encoder(), tmp_path / "bundle")
