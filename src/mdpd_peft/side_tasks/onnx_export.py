"""Exporting a side-task model to ONNX: one graph holding the frozen encoder and every task, for any ONNX runtime.

The graph is the model's own forward, traced: the encoder runs, the hooks of ``SideTaskModel`` hand its states to
the tasks, and each task's side network and head compute its logits, so whatever those modules compute is what the
graph computes. The folder follows optimum's layout (``model.onnx``, the encoder's ``config.json`` and the processor's
files beside it) and adds ``side_tasks.json``, which says which output holds which task and how to read it.

The exporter is ``torch.onnx.export(..., dynamo=False)`` (TorchScript tracing). The ``torch.export``-based exporter
(``dynamo=True``) exports the same graph with the same outputs, but took 20 to 50 times as long here (most of a
minute for a 4-layer test encoder) and needs ``onnxscript``; tracing runs the hooks as plain Python and records the
tensor operations they cause. Branches on tensor values are kept out of the trace: attention always gets its key
mask (``every_token_real``), so the graph is right for padded and full batches alike.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import warnings
from contextlib import contextmanager

import torch
from peft import PeftModel
from torch import nn

from ..config import invalid
from ..safe_saving import replaced_folder
from .config import SideTaskConfig
from .model import SideTaskModel, side_task_model_of

ONNX_FILE = "model.onnx"  # optimum's name
TASKS_FILE = "side_tasks.json"
FORMAT_VERSION = 1
TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
MIN_OPSET = 14  # scaled_dot_product_attention
EXAMPLE_BATCH, EXAMPLE_TOKENS = 2, 8  # the traced example; the graph takes any batch and length


class SideTaskGraph(nn.Module):
    """The traced forward: the encoder's inputs, positionally in ``input_names`` order -> one logits tensor per task."""

    def __init__(self, model: nn.Module, input_names: list[str], tasks: list[str]):
        super().__init__()
        self.model = model
        self.input_names = input_names
        self.tasks = tasks

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        output = self.model(**dict(zip(self.input_names, inputs)), tasks=self.tasks)
        return tuple(output.task_logits[name] for name in self.tasks)


def encoder_input_names(encoder: nn.Module) -> list[str]:
    """What the graph takes: ``pixel_values`` for an image encoder; else ``input_ids``, ``attention_mask`` and, where
    the encoder has token types (``type_vocab_size`` > 1, as BERT), ``token_type_ids``."""
    parameters = inspect.signature(encoder.forward).parameters
    if "pixel_values" in parameters:
        return ["pixel_values"]
    types = getattr(encoder.config, "type_vocab_size", 0) or 0
    return [name for name in TEXT_INPUTS if name in parameters and (name != "token_type_ids" or types > 1)]


def input_axes(input_names: list[str]) -> dict[str, dict[int, str]]:
    """The dynamic axes of the encoder's inputs: batch and sequence for texts, the batch for images."""
    axes = {0: "batch"} if input_names == ["pixel_values"] else {0: "batch", 1: "sequence"}
    return {name: axes for name in input_names}


def example_inputs(encoder: nn.Module, input_names: list[str]) -> tuple[torch.Tensor, ...]:
    """A small batch to trace with, where the encoder's weights are; its last row is padded, so that no branch could
    trace the unpadded case only."""
    config, weight = encoder.config, next(encoder.parameters())
    if input_names == ["pixel_values"]:
        size = config.image_size if isinstance(config.image_size, (tuple, list)) else (config.image_size, config.image_size)
        return (torch.zeros(EXAMPLE_BATCH, config.num_channels, *size, dtype=weight.dtype, device=weight.device),)
    attention_mask = torch.ones(EXAMPLE_BATCH, EXAMPLE_TOKENS, dtype=torch.long, device=weight.device)
    attention_mask[-1, EXAMPLE_TOKENS // 2 :] = 0
    examples = {"input_ids": torch.ones_like(attention_mask), "attention_mask": attention_mask}
    examples["token_type_ids"] = torch.zeros_like(attention_mask)
    return tuple(examples[name] for name in input_names)


def output_names(tasks: list[str], input_names: list[str]) -> dict[str, str]:
    """Task -> the name of its output: the task's name, with every character other than a letter, digit, ``_``, ``-``
    or ``.`` replaced by ``_``; a name that would repeat an input's or an earlier task's gets ``_1``, ``_2``, ..."""
    taken, names = set(input_names), {}
    for task in tasks:
        base = name = re.sub(r"[^0-9A-Za-z_.\-]", "_", task) or "_"
        suffix = 0
        while name in taken:
            suffix += 1
            name = f"{base}_{suffix}"
        taken.add(name)
        names[task] = name
    return names


def task_entry(config: SideTaskConfig, output: str) -> dict:
    """What ``side_tasks.json`` says of one task: its output and how to read it, and its whole config."""
    saved = {key: sorted(value) if isinstance(value, set) else value for key, value in config.to_dict().items()}
    return {
        "output": output,
        "problem_type": config.problem_type,
        "num_labels": config.num_labels,
        "id2label": {str(index): label for index, label in config.id2label.items()},
        "per_token": config.per_token,
        "pooling": None if config.per_token else config.pooling,
        "config": saved,
    }


def export_graph(module: nn.Module, examples: tuple, path: str, inputs: list[str], outputs: list[str], dynamic_axes: dict, opset: int | None) -> None:
    """``torch.onnx.export`` as ``export_onnx`` calls it (TorchScript tracing in eval mode, no autograd), for any
    module: the serving benchmark exports plain fine-tuned models with it too, so that both run under the same
    settings. Every submodule keeps its train/eval mode (the exporter would leave all of them in the mode of
    ``module``, a wrapper built in train mode)."""
    with torch.no_grad(), warnings.catch_warnings(), restored_modes(module):
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape arithmetic on traced sizes: traced
        warnings.simplefilter("ignore", DeprecationWarning)  # dynamo=False: see the module's docstring
        # transformers' padding mask indexes with aranges, never with the negative indices this warns about
        warnings.filterwarnings("ignore", "Exporting aten::index operator of advanced indexing", UserWarning)
        torch.onnx.export(module, examples, path, input_names=inputs, output_names=outputs, dynamic_axes=dynamic_axes, opset_version=opset, dynamo=False)


@contextmanager
def restored_modes(module: nn.Module):
    """Inside, anything may switch ``module``'s submodules between train and eval mode; after, each is as before."""
    modes = [(submodule, submodule.training) for submodule in module.modules()]
    try:
        yield
    finally:
        for submodule, training in modes:
            submodule.training = training


def export_onnx(
    model: PeftModel | SideTaskModel,
    folder: str | os.PathLike,
    processor=None,
    tasks: list[str] | None = None,
    opset: int | None = None,
) -> str | os.PathLike:
    """Export a side-task model to ONNX: one graph running the encoder once and every task on its states.

    ``folder`` (replaced as a whole) gets ``model.onnx``, the encoder's ``config.json``, the ``processor``'s files
    (so that ``SideTaskPipeline.from_onnx(folder)`` finds it) and ``side_tasks.json``: for each task its output's
    name, ``problem_type``, ``num_labels``, ``id2label``, ``per_token``, ``pooling`` and its whole
    ``SideTaskConfig``, plus the graph's inputs and opset.

    The graph's inputs are the encoder's: ``input_ids``, ``attention_mask`` and, for encoders with token types (BERT),
    ``token_type_ids``, each (batch, sequence) int64 with both axes dynamic; or ``pixel_values`` (batch, channels,
    height, width) float32, the batch dynamic. Its outputs are one logits tensor per task, (batch, num_labels), or
    (batch, sequence, num_labels) for token classification; each is named after its task (see ``output_names`` for
    how names that are not plain identifiers are rewritten; ``side_tasks.json`` maps task -> output). The graph is
    exported in fp32 from the model as it is (CPU), in eval mode; ladders of one shape run stacked as in serving.

    Args:
        model: A ``PeftModel`` of side tasks (``load_side_tasks``, ``get_peft_model(encoder, SideTaskConfig(...))``).
        folder: Where to write.
        processor: The encoder's tokenizer or image processor, saved beside the graph.
        tasks: The tasks in the graph; ``None``: the active ones (all of them after ``load_side_tasks``).
        opset: The ONNX opset; ``None``: the exporter's default.

    Returns:
        ``folder``.
    """
    tuner = side_task_model_of(model)
    names = tuner.tasks_to_run(tasks)
    if not names:
        raise ValueError(f"tasks={tasks!r} leaves no task to export (None exports the active ones, and none is active): name them (tasks=[...]) or activate them (model.base_model.set_adapter([...])).")
    if opset is not None and not (isinstance(opset, int) and not isinstance(opset, bool) and opset >= MIN_OPSET):
        raise invalid("opset", opset, f"None (the exporter's default) or an integer >= {MIN_OPSET}", "export_onnx")
    encoder = tuner.model
    inputs = encoder_input_names(encoder)
    outputs = output_names(names, inputs)
    per_token_axes = input_axes(inputs)[inputs[0]]
    dynamic_axes = input_axes(inputs) | {outputs[name]: per_token_axes if tuner.peft_config[name].per_token else {0: "batch"} for name in names}
    with replaced_folder(folder) as staging:
        graph = SideTaskGraph(model, inputs, names)
        export_graph(graph, example_inputs(encoder, inputs), os.path.join(staging, ONNX_FILE), inputs, [outputs[name] for name in names], dynamic_axes, opset)
        encoder.config.save_pretrained(staging)
        if processor is not None:
            processor.save_pretrained(staging)
        manifest = {
            "format_version": FORMAT_VERSION,
            "onnx_file": ONNX_FILE,
            "inputs": inputs,
            "opset": graph_opset(os.path.join(staging, ONNX_FILE)),
            "tasks": {name: task_entry(tuner.peft_config[name], outputs[name]) for name in names},
        }
        with open(os.path.join(staging, TASKS_FILE), "w", encoding="utf-8") as file:
            json.dump(manifest, file, indent=1)
    return folder


def graph_opset(path: str) -> int:
    """The default-domain opset the graph at ``path`` was written with (needs ``onnx``)."""
    import onnx

    return next(entry.version for entry in onnx.load(path, load_external_data=False).opset_import if entry.domain in ("", "ai.onnx"))


def read_manifest(folder: str) -> dict:
    """``side_tasks.json`` of an exported folder; a ValueError saying what the folder holds where it is missing."""
    path = os.path.join(folder, TASKS_FILE)
    if not os.path.isfile(path) or not os.path.isfile(os.path.join(folder, ONNX_FILE)):
        raise ValueError(f"{folder} is no exported side-task graph (no {TASKS_FILE} and {ONNX_FILE}; write one with export_onnx). It holds: {sorted(os.listdir(folder))}.")
    with open(path, encoding="utf-8") as file:
        manifest = json.load(file)
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path} has format_version {manifest.get('format_version')!r}; this mdpd-peft reads {FORMAT_VERSION}.")
    return manifest


def saved_task_config(entry: dict) -> SideTaskConfig:
    """The ``SideTaskConfig`` of one task of ``side_tasks.json`` (settings this version does not know are left out)."""
    known = SideTaskConfig.__dataclass_fields__
    return SideTaskConfig(**{key: value for key, value in entry["config"].items() if key in known})
