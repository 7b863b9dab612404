"""SideTaskPipeline: texts or images in, labels and scores of every task out, from one encoder pass per batch."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import torch
from peft import PeftModel
from torch import nn

from .bundle import load_side_tasks, local_bundle
from .config import SideTaskConfig
from .model import side_task_model_of
from .pipeline_base import TaskPipelineBase, saved_processor

if TYPE_CHECKING:
    from .onnx_pipeline import OnnxSideTaskPipeline


class SideTaskPipeline(TaskPipelineBase):
    """Predict every task of a side-task model, as transformers' ``pipeline`` does for one.

    ``pipe("a text")`` (with a tokenizer as ``processor``) or ``pipe(image)`` (with an image processor) returns
    ``{task: prediction}``; a list of inputs returns one such dict per input. Each batch of ``batch_size`` inputs
    runs the encoder once, in eval mode under ``torch.inference_mode``, and every task reads that pass. Predictions
    are plain Python values, per problem type:

    - single-label classification: ``{"label": name, "score": softmax probability}``, or with ``top_k=k`` the
      list of the k most probable;
    - multi-label classification: the list of ``{"label", "score"}`` whose sigmoid score is >= ``threshold``,
      best first;
    - regression: ``{"score": value}``;
    - token classification (texts only): ``{"token", "label", "score"}`` per real token, special tokens skipped.

    ``SideTaskPipeline.from_onnx(folder)`` serves a bundle exported with ``export_onnx`` on ONNX Runtime instead,
    with the same call and the same predictions.

    Args:
        model: A ``PeftModel`` of side tasks (``load_side_tasks``, ``get_peft_model(encoder, SideTaskConfig(...))``).
        processor: The tokenizer (texts; truncated to the encoder's maximum positions, padded per batch) or the
            image processor (images) of the encoder.
        tasks: The tasks to predict; ``None``: every task of the model, whichever are active.
        batch_size: Inputs per encoder pass.
        device: Where to run; ``None`` keeps the model where it is.
    """

    def __init__(self, model: PeftModel, processor, tasks: list[str] | None = None, batch_size: int = 32, device: str | torch.device | None = None):
        tuner = side_task_model_of(model)
        names = tuner.tasks_to_run(tasks if tasks is not None else tuner.tasks)
        configs: dict[str, SideTaskConfig] = {name: tuner.peft_config[name] for name in names}
        super().__init__(processor, names, configs, batch_size, getattr(getattr(tuner.model, "config", None), "max_position_embeddings", None))
        self.model = model.to(device) if device is not None else model
        self.model.eval()

    @classmethod
    def from_pretrained(cls, encoder: nn.Module, folder: str | os.PathLike, tasks: list[str] | None = None, **kwargs) -> "SideTaskPipeline":
        """The pipeline of a bundle (``save_side_tasks``' folder or Hub repository) on ``encoder``, with the processor
        saved there; ``kwargs`` as for the constructor."""
        folder = local_bundle(folder)
        processor = saved_processor(folder, "save the bundle with save_side_tasks(..., processor=...), or build SideTaskPipeline(load_side_tasks(encoder, folder), processor)")
        return cls(load_side_tasks(encoder, folder, tasks), processor, **kwargs)

    @classmethod
    def from_onnx(cls, folder: str | os.PathLike, tasks: list[str] | None = None, **kwargs) -> "OnnxSideTaskPipeline":
        """The pipeline of a folder written by ``export_onnx``, run on ONNX Runtime: an ``OnnxSideTaskPipeline`` (same
        call, same predictions; needs ``onnxruntime``); ``kwargs`` as for its constructor."""
        from .onnx_pipeline import OnnxSideTaskPipeline

        return OnnxSideTaskPipeline(folder, tasks, **kwargs)

    @torch.inference_mode()
    def task_logits(self, encoded: dict[str, torch.Tensor], tasks: list[str]) -> dict[str, torch.Tensor]:
        device = next(self.model.parameters()).device
        return self.model(**{key: value.to(device) for key, value in encoded.items()}, tasks=tasks).task_logits
