"""OnnxSideTaskPipeline: ``SideTaskPipeline``'s call and predictions, on ONNX Runtime, from an ``export_onnx`` folder."""

from __future__ import annotations

import os

import numpy as np
import torch
from transformers import AutoConfig

from .bundle import local_bundle
from .onnx_export import read_manifest, saved_task_config
from .pipeline_base import TaskPipelineBase, saved_processor


class OnnxSideTaskPipeline(TaskPipelineBase):
    """Predict the tasks of an exported graph (``export_onnx``) with ONNX Runtime, as ``SideTaskPipeline`` does with
    PyTorch: same ``__call__(inputs, top_k=None, threshold=0.5, *, tasks=None)``, same predictions, same ``tasks``
    and ``configs`` (task -> ``SideTaskConfig``, rebuilt from ``side_tasks.json``). Reachable as
    ``SideTaskPipeline.from_onnx(folder)``. Needs ``onnxruntime`` (``pip install "mdpd-peft[serve]"``).

    Each batch is one run of the graph. A call naming ``tasks`` asks the session for those outputs only; ONNX
    Runtime still runs the whole graph (measured: asking for one of eight tasks' outputs takes as long as asking
    for all), so the saving is in post-processing.

    Args:
        folder: A folder written by ``export_onnx`` with the processor saved beside the graph (or a Hub repository id
            holding one).
        tasks: The tasks to predict; ``None``: every task in the graph.
        batch_size: Inputs per run of the graph.
        providers: ONNX Runtime's execution providers; ``None``: ``["CPUExecutionProvider"]``.
        session_options: An ``onnxruntime.SessionOptions`` (threads, graph optimisation level); ``None``: the defaults.
    """

    def __init__(self, folder: str | os.PathLike, tasks: list[str] | None = None, batch_size: int = 32, providers: list | None = None, session_options=None):
        try:
            import onnxruntime
        except ImportError as error:
            raise ImportError("OnnxSideTaskPipeline runs on ONNX Runtime: pip install onnxruntime (or mdpd-peft[serve]).") from error
        folder = local_bundle(folder)
        manifest = read_manifest(folder)
        saved = manifest["tasks"]
        names = list(saved) if tasks is None else [tasks] if isinstance(tasks, str) else list(tasks)
        unknown = [name for name in names if name not in saved]
        if unknown or not names:
            raise ValueError(f"tasks={tasks!r} names task(s) {unknown} that {folder} does not hold: its graph has the tasks {list(saved)}.")
        processor = saved_processor(folder, "export with export_onnx(..., processor=...)")
        encoder_config = AutoConfig.from_pretrained(folder)
        super().__init__(processor, names, {name: saved_task_config(saved[name]) for name in names}, batch_size, getattr(encoder_config, "max_position_embeddings", None))
        self.outputs = {name: saved[name]["output"] for name in names}  # task -> output of the graph
        self.session = onnxruntime.InferenceSession(os.path.join(folder, manifest["onnx_file"]), session_options, providers=providers or ["CPUExecutionProvider"])
        self.input_names = [node.name for node in self.session.get_inputs()]

    def task_logits(self, encoded: dict[str, torch.Tensor], tasks: list[str]) -> dict[str, torch.Tensor]:
        """One run of the graph, asking for the outputs of ``tasks``. A tokenizer that gives no ``token_type_ids`` to
        a graph that takes them gets zeros, as the encoder does when none are passed."""
        feeds = {}
        for name in self.input_names:
            value = encoded.get(name)
            feeds[name] = value.numpy() if value is not None else np.zeros_like(encoded["input_ids"].numpy())
        logits = self.session.run([self.outputs[name] for name in tasks], feeds)
        return {name: torch.from_numpy(values) for name, values in zip(tasks, logits)}
