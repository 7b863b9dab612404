"""Side-task bundles exported to one ONNX graph (export_onnx) and served on ONNX Runtime (SideTaskPipeline.from_onnx)."""

import json

import numpy as np
import pytest
import torch
import transformers
from peft import LoraConfig, get_peft_model
from PIL import Image
from transformers import AutoTokenizer

from conftest import text_batch
from mdpd_peft import SideTaskConfig, SideTaskPipeline, export_onnx
from mdpd_peft.side_tasks.onnx_export import output_names
from mdpd_peft.side_tasks.onnx_pipeline import OnnxSideTaskPipeline
from test_side_task_bundle import TASKS, TEXTS, assert_same_predictions, task_logits, tasks_model, tiny_encoder

ort = pytest.importorskip("onnxruntime")

ATOL = 1e-4  # fp32, PyTorch against ONNX Runtime


def ort_logits(folder, inputs: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Task -> logits of one run of the exported graph, read through side_tasks.json."""
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    manifest = json.loads((folder / "side_tasks.json").read_text())
    feeds = {node.name: inputs[node.name].numpy() for node in session.get_inputs()}
    outputs = [node.name for node in session.get_outputs()]
    values = dict(zip(outputs, session.run(None, feeds)))
    return {task: values[entry["output"]] for task, entry in manifest["tasks"].items()}


def assert_close(actual: dict[str, np.ndarray], expected: dict[str, torch.Tensor]):
    assert actual.keys() == expected.keys()
    for name, logits in expected.items():
        assert actual[name].shape == tuple(logits.shape), name
        np.testing.assert_allclose(actual[name], logits.numpy(), atol=ATOL, rtol=0, err_msg=name)


@pytest.fixture(scope="module")
def tokenizer(minilm_path):
    return AutoTokenizer.from_pretrained(minilm_path)


@pytest.fixture(scope="module")
def text_export(tokenizer, tmp_path_factory):
    """Four tasks (single-label, multi-label, regression, token classification) on a tiny BERT, exported once."""
    model = tasks_model(list(TASKS), tiny_encoder(vocab_size=len(tokenizer)))
    folder = tmp_path_factory.mktemp("onnx") / "exported"
    export_onnx(model, folder, processor=tokenizer)
    return model, folder


# ------------------------------------------------------------------------------------------------ the graph


@pytest.mark.parametrize("batch, length", [(6, 16), (3, 9)])  # two shapes: the batch and sequence axes are dynamic
def test_text_graph_equals_pytorch_on_padded_batches(text_export, batch, length):
    model, folder = text_export
    inputs = text_batch(batch=batch, length=length, pad_from=length // 2)
    inputs["token_type_ids"] = torch.randint(0, 2, (batch, length), generator=torch.Generator().manual_seed(0))
    inputs["attention_mask"][1, 2:] = 0  # a second padded row, padded further
    assert_close(ort_logits(folder, inputs), task_logits(model, inputs, token_type_ids=inputs["token_type_ids"]))


def test_text_graph_equals_pytorch_on_a_batch_without_padding(text_export):
    """PyTorch drops the attention key mask when no token is padding; the graph always keeps it: same logits."""
    model, folder = text_export
    inputs = text_batch(batch=4, length=12, pad_from=None)
    inputs["token_type_ids"] = torch.zeros_like(inputs["input_ids"])
    assert_close(ort_logits(folder, inputs), task_logits(model, inputs))


@pytest.mark.parametrize("side_network", ["unipt", "sherl", "dtl+"])
def test_other_side_networks_export_through_their_own_modules(tmp_path, side_network):
    """Whatever a task's modules compute is traced: UniPT's, and SHERL's and DTL's, which re-run encoder layers."""
    model = get_peft_model(tiny_encoder(), SideTaskConfig(side_network=side_network, reduction_factor=4, num_labels=3), adapter_name="sequence")
    model.add_adapter("tokens", SideTaskConfig(side_network=side_network, reduction_factor=4, num_labels=2, problem_type="token_classification"))
    model.base_model.set_adapter(["sequence", "tokens"])
    export_onnx(model.eval(), tmp_path / side_network)
    for batch, length in [(5, 12), (2, 7)]:
        inputs = text_batch(batch=batch, length=length, pad_from=3)
        inputs["token_type_ids"] = torch.zeros_like(inputs["input_ids"])
        assert_close(ort_logits(tmp_path / side_network, inputs), task_logits(model, inputs))


def test_image_graph_equals_pytorch_for_every_task(tmp_path):
    torch.manual_seed(0)
    config = transformers.ViTConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128)
    model = get_peft_model(transformers.ViTModel(config, add_pooling_layer=False).eval(), SideTaskConfig(reduction_factor=4, pooling="first", num_labels=3), adapter_name="animal")
    model.add_adapter("tags", SideTaskConfig(reduction_factor=4, id2label={0: "indoor", 1: "night"}, problem_type="multi_label_classification"))
    model.base_model.set_adapter(["animal", "tags"])
    export_onnx(model.eval(), tmp_path / "vit")
    manifest = json.loads((tmp_path / "vit" / "side_tasks.json").read_text())
    assert manifest["inputs"] == ["pixel_values"] and manifest["tasks"]["animal"]["pooling"] == "first"
    for batch in (5, 2):  # the batch axis is dynamic
        pixel_values = torch.randn(batch, 3, 16, 16, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            expected = model(pixel_values=pixel_values).task_logits
        assert_close(ort_logits(tmp_path / "vit", {"pixel_values": pixel_values}), expected)


def test_folder_holds_graph_encoder_config_processor_and_task_manifest(text_export, tokenizer):
    model, folder = text_export
    assert not any(module.training for module in model.modules())  # exported in eval mode, left in it
    assert {"model.onnx", "config.json", "side_tasks.json", "tokenizer.json", "tokenizer_config.json"} <= {path.name for path in folder.iterdir()}
    assert transformers.AutoConfig.from_pretrained(folder).to_dict()["hidden_size"] == 64  # the encoder's config
    manifest = json.loads((folder / "side_tasks.json").read_text())
    assert manifest["inputs"] == ["input_ids", "attention_mask", "token_type_ids"] and manifest["opset"] >= 17  # the exporter's default
    assert list(manifest["tasks"]) == list(TASKS)
    topic, ner = manifest["tasks"]["topic"], manifest["tasks"]["ner"]
    assert topic["output"] == "topic" and topic["problem_type"] == "multi_label_classification" and topic["id2label"] == {"0": "sport", "1": "politics", "2": "science"}
    assert ner["per_token"] and ner["pooling"] is None and manifest["tasks"]["stars"]["num_labels"] == 1
    assert topic["config"]["reduction_factor"] == 4 and topic["config"]["side_network"] == "ladder"  # the whole config
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [(node.name, node.shape) for node in session.get_inputs()] == [(name, ["batch", "sequence"]) for name in manifest["inputs"]]
    assert [(node.name, node.shape) for node in session.get_outputs()] == [
        ("sentiment", ["batch", 2]), ("topic", ["batch", 3]), ("stars", ["batch", 1]), ("ner", ["batch", "sequence", 3])
    ]


def test_tasks_argument_exports_those_tasks_only_and_the_model_stays_as_it_was(tmp_path):
    model = tasks_model(["sentiment", "topic", "stars"]).train()
    expected = task_logits(model.eval(), tasks=["stars", "topic"])
    model.train()
    export_onnx(model, tmp_path / "two", tasks=["stars", "topic"], opset=17)
    assert all(module.training for module in model.modules()) and model.base_model.active_adapters == ["sentiment", "topic", "stars"]
    manifest = json.loads((tmp_path / "two" / "side_tasks.json").read_text())
    assert list(manifest["tasks"]) == ["stars", "topic"] and manifest["opset"] == 17
    inputs = text_batch()
    inputs["token_type_ids"] = torch.zeros_like(inputs["input_ids"])
    assert_close(ort_logits(tmp_path / "two", inputs), expected)


def test_output_names_are_sanitised_and_distinct():
    names = output_names(["sentiment", "my task/v2", "my_task_v2", "input_ids", "ünïcode"], ["input_ids", "attention_mask"])
    assert names == {"sentiment": "sentiment", "my task/v2": "my_task_v2", "my_task_v2": "my_task_v2_1", "input_ids": "input_ids_1", "ünïcode": "_n_code"}


def test_bad_arguments_fail_naming_them(tmp_path):
    model = tasks_model(["sentiment", "topic"])
    with pytest.raises(ValueError, match=r"unknown task\(s\) \['x'\].*has the tasks \['sentiment', 'topic'\]"):
        export_onnx(model, tmp_path / "a", tasks=["sentiment", "x"])
    with pytest.raises(ValueError, match=r"export_onnx\.opset=9 is invalid: opset must be None .* or an integer >= 14"):
        export_onnx(model, tmp_path / "a", opset=9)
    with pytest.raises(TypeError, match=r"get_peft_model\(encoder, SideTaskConfig\(\.\.\.\)\) or load_side_tasks; got BertModel"):
        export_onnx(tiny_encoder(), tmp_path / "a")
    with pytest.raises(TypeError, match=r"got PeftModel"):
        export_onnx(get_peft_model(tiny_encoder(), LoraConfig(target_modules=["query"])), tmp_path / "a")
    with model.base_model.encoder_only(), pytest.raises(ValueError, match=r"none is active"):
        export_onnx(model, tmp_path / "a")
    assert not (tmp_path / "a").exists()  # nothing half-written


# ------------------------------------------------------------------------------------------- the pipeline


def test_onnx_pipeline_predicts_what_the_torch_pipeline_does_on_texts(text_export, tokenizer):
    model, folder = text_export
    expected = SideTaskPipeline(model, tokenizer, batch_size=2)
    served = SideTaskPipeline.from_onnx(folder, batch_size=2)
    assert isinstance(served, OnnxSideTaskPipeline) and served.tasks == expected.tasks
    assert {name: (config.id2label, config.problem_type, config.per_token) for name, config in served.configs.items()} == {
        name: (config.id2label, config.problem_type, config.per_token) for name, config in expected.configs.items()
    }
    for kwargs in ({"threshold": 0.0}, {"top_k": 2}, {"tasks": ["ner", "stars"]}):
        assert_same_predictions(served(TEXTS, **kwargs), expected(TEXTS, **kwargs))
    assert_same_predictions(served(TEXTS[1]), expected(TEXTS[1]))
    assert served.max_length == 64  # the encoder's positions, read from the exported config.json
    some = SideTaskPipeline.from_onnx(str(folder), tasks=["topic"])
    assert some.tasks == ["topic"] and list(some(TEXTS[0], threshold=0.0)) == ["topic"]


def test_onnx_pipeline_predicts_what_the_torch_pipeline_does_on_images(tmp_path):
    torch.manual_seed(0)
    config = transformers.ViTConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128)
    model = get_peft_model(transformers.ViTModel(config, add_pooling_layer=False).eval(), SideTaskConfig(reduction_factor=4, pooling="first", id2label={0: "cat", 1: "dog", 2: "bird"}), adapter_name="animal")
    processor = transformers.ViTImageProcessor(size={"height": 16, "width": 16})
    images = [Image.fromarray(np.random.default_rng(i).integers(0, 255, (20, 24, 3), dtype=np.uint8)) for i in range(3)]
    export_onnx(model, tmp_path / "vit", processor=processor)
    served = SideTaskPipeline.from_onnx(tmp_path / "vit", batch_size=2)
    assert_same_predictions(served(images, top_k=3), SideTaskPipeline(model, processor, batch_size=2)(images, top_k=3))


def test_onnx_pipeline_errors_name_what_is_wrong(text_export, tmp_path):
    _, folder = text_export
    with pytest.raises(ValueError, match=r"\['x'\].*its graph has the tasks \['sentiment', 'topic', 'stars', 'ner'\]"):
        SideTaskPipeline.from_onnx(folder, tasks=["x"])
    with pytest.raises(ValueError, match=r"unknown task\(s\) \['x'\]"):
        SideTaskPipeline.from_onnx(folder)(TEXTS, tasks=["x"])
    (tmp_path / "weights.bin").write_text("")
    with pytest.raises(ValueError, match=r"no exported side-task graph.*\['weights.bin'\]"):
        SideTaskPipeline.from_onnx(tmp_path)
    export_onnx(tasks_model(["sentiment"]), tmp_path / "bare")
    with pytest.raises(ValueError, match=r"holds no processor.*export_onnx\(\.\.\., processor=\.\.\.\)"):
        SideTaskPipeline.from_onnx(tmp_path / "bare")
