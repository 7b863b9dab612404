"""What every side-task pipeline shares, whatever runs the encoder (PyTorch in ``pipeline``, ONNX Runtime in
``onnx_pipeline``): inputs checked, processed and batched, and each batch's logits turned into predictions."""

from __future__ import annotations

import os
from typing import Any

import torch
from transformers import AutoImageProcessor, AutoTokenizer, PreTrainedTokenizerBase
from transformers.tokenization_utils_base import TOKENIZER_CONFIG_FILE
from transformers.utils import IMAGE_PROCESSOR_NAME

from .config import SideTaskConfig

DEFAULT_THRESHOLD = 0.5  # multi-label classification: the sigmoid score a label needs to be predicted


class TaskPipelineBase:
    """What every side-task pipeline does whatever runs the encoder: inputs checked, processed and batched, and each
    batch's logits turned into predictions (see ``SideTaskPipeline``). A subclass runs one batch: ``task_logits``.

    Args:
        processor: The tokenizer (texts) or image processor (images) of the encoder.
        tasks: The tasks the pipeline predicts, checked by the subclass.
        configs: Each task's ``SideTaskConfig`` (its ``problem_type``, ``id2label``, ``per_token`` are read).
        batch_size: Inputs per encoder pass.
        max_positions: The encoder's position table (``max_position_embeddings``); texts are truncated to it.
    """

    def __init__(self, processor, tasks: list[str], configs: dict[str, SideTaskConfig], batch_size: int, max_positions: int | None):
        if not (isinstance(batch_size, int) and batch_size >= 1):
            raise ValueError(f"batch_size={batch_size!r}: expected an integer >= 1.")
        self.texts = isinstance(processor, PreTrainedTokenizerBase)
        per_token = [name for name in tasks if configs[name].per_token]
        if per_token and not self.texts:
            raise ValueError(f"Task(s) {per_token} label tokens: a side-task pipeline serves token classification on texts (a tokenizer as processor) only.")
        self.processor = processor
        self.tasks = tasks
        self.configs = configs
        self.batch_size = batch_size
        self.max_length = min(limit for limit in (processor.model_max_length, max_positions) if limit is not None) if self.texts else None

    def task_logits(self, encoded: dict[str, torch.Tensor], tasks: list[str]) -> dict[str, torch.Tensor]:
        """One encoder pass on a processed batch -> the logits of each of ``tasks``: (B, C), or (B, N, C) per token."""
        raise NotImplementedError

    def __call__(self, inputs, top_k: int | None = None, threshold: float = DEFAULT_THRESHOLD, *, tasks: list[str] | None = None):
        """``inputs``: a text or image, or a list of them -> a dict of predictions per task, or a list of them.

        ``tasks``: predict only these of the pipeline's tasks (one encoder pass still serves them all); ``None``: all.
        """
        tasks = self.tasks_of_call(tasks)
        single = isinstance(inputs, str) or not isinstance(inputs, (list, tuple))
        items = [inputs] if single else list(inputs)
        not_text = next((item for item in items if not isinstance(item, str)), None) if self.texts else None
        if not_text is not None:
            raise TypeError(f"This pipeline's processor is a tokenizer: give a text or a list of texts, not {type(not_text).__name__}.")
        check_top_k(top_k)
        results = []
        for start in range(0, len(items), self.batch_size):
            results.extend(self.predict_batch(items[start : start + self.batch_size], top_k, threshold, tasks))
        return results[0] if single else results

    def predict_each(self, items: list, options: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Predict each item with its own keyword arguments of ``__call__`` (``tasks``, ``top_k``, ``threshold``),
        all items in the same encoder passes: what a server needs to batch requests that ask for different things.

        The passes run the union of the items' tasks at the widest options (the largest ``top_k``, the lowest
        ``threshold``); each item's predictions are then cut to its own options (``narrowed_prediction``) and tasks.
        ``options[i]`` belongs to ``items[i]``; a missing key takes ``__call__``'s default.
        """
        if len(options) != len(items):
            raise ValueError(f"options: expected one dict of options per item ({len(items)}), got {len(options)}.")
        if not items:
            return []
        tasks_each = [self.tasks_of_call(option.get("tasks")) for option in options]
        for option in options:
            check_top_k(option.get("top_k"))
        union = [name for name in self.tasks if any(name in tasks for tasks in tasks_each)]
        widest_top_k = max(option.get("top_k") or 1 for option in options)
        lowest_threshold = min(option.get("threshold", DEFAULT_THRESHOLD) for option in options)
        wide = self(list(items), widest_top_k, lowest_threshold, tasks=union)
        return [
            {name: narrowed_prediction(self.configs[name], predictions[name], option.get("top_k"), option.get("threshold", DEFAULT_THRESHOLD)) for name in tasks}
            for predictions, option, tasks in zip(wide, options, tasks_each)
        ]

    def truncated(self, items: list) -> list[int]:
        """The indices of the texts among ``items`` longer than ``max_length`` tokens (special tokens counted),
        which the pipeline cuts to that length; ``[]`` for images."""
        if not self.texts:
            return []
        lengths = self.processor(list(items), truncation=False, return_length=True, verbose=False)["length"]
        return [index for index, length in enumerate(lengths) if length > self.max_length]

    def tasks_of_call(self, tasks: str | list[str] | None) -> list[str]:
        """The tasks one call predicts: ``tasks`` checked against the pipeline's (an unknown name fails, listing them)."""
        if tasks is None:
            return self.tasks
        names = [tasks] if isinstance(tasks, str) else list(tasks)
        unknown = [name for name in names if name not in self.tasks]
        if unknown or not names:
            raise ValueError(f"tasks={tasks!r} names unknown task(s) {unknown}: this pipeline predicts the tasks {self.tasks}.")
        return names

    def predict_batch(self, items: list, top_k: int | None, threshold: float, tasks: list[str] | None = None) -> list[dict[str, Any]]:
        """One encoder pass for ``items``, every task of ``tasks`` (default: the pipeline's) read from it."""
        tasks = self.tasks if tasks is None else tasks
        encoded, special = self.encode(items)
        per_task = {}
        for name, logits in self.task_logits(dict(encoded), tasks).items():
            config, logits = self.configs[name], logits.float().cpu()
            if config.per_token:
                real = encoded["attention_mask"].bool() & ~special
                per_task[name] = [self.token_predictions(config, row, ids, mask) for row, ids, mask in zip(logits, encoded["input_ids"], real)]
            else:
                per_task[name] = [sequence_prediction(config, row, top_k, threshold) for row in logits]
        return [{name: per_task[name][i] for name in tasks} for i in range(len(items))]

    def encode(self, items: list) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """items -> the processor's batch (texts truncated to ``max_length`` and padded to the longest) and, for
        texts, the mask of special tokens (B, N), which token predictions skip."""
        if self.texts:
            encoded = self.processor(items, truncation=True, max_length=self.max_length, padding=True, return_tensors="pt", return_special_tokens_mask=True)
            return encoded, encoded.pop("special_tokens_mask").bool()
        return self.processor(images=items, return_tensors="pt"), None

    def token_predictions(self, config: SideTaskConfig, logits: torch.Tensor, ids: torch.Tensor, real: torch.Tensor) -> list[dict[str, Any]]:
        """logits (N, C) of one text -> the best label of each real token."""
        scores, labels = logits[real].softmax(-1).max(-1)
        tokens = self.processor.convert_ids_to_tokens(ids[real].tolist())
        return [{"token": token, "label": config.id2label[label], "score": score} for token, label, score in zip(tokens, labels.tolist(), scores.tolist())]


def check_top_k(top_k) -> None:
    if top_k is not None and not (isinstance(top_k, int) and top_k >= 1):
        raise ValueError(f"top_k={top_k!r}: expected None (the best label) or an integer >= 1.")


def sequence_prediction(config: SideTaskConfig, logits: torch.Tensor, top_k: int | None, threshold: float):
    """logits (C,) of one input -> its prediction for the task's problem type (see ``SideTaskPipeline``)."""
    if config.problem_type == "regression":
        return {"score": logits.item()}
    if config.problem_type == "multi_label_classification":
        scores, indices = logits.sigmoid().sort(descending=True)
        return [{"label": config.id2label[index], "score": score} for index, score in zip(indices.tolist(), scores.tolist()) if score >= threshold]
    scores, indices = logits.softmax(-1).topk(min(top_k or 1, config.num_labels))
    best = [{"label": config.id2label[index], "score": score} for index, score in zip(indices.tolist(), scores.tolist())]
    return best if top_k is not None else best[0]


def narrowed_prediction(config: SideTaskConfig, prediction, top_k: int | None, threshold: float):
    """A prediction made with an integer ``top_k`` at least this one and a ``threshold`` at most this one, cut to
    these options: what ``sequence_prediction`` (or ``token_predictions``) gives at them."""
    if config.problem_type == "multi_label_classification":
        return [label for label in prediction if label["score"] >= threshold]  # sorted best first: a prefix
    if config.problem_type == "single_label_classification":
        return prediction[:top_k] if top_k is not None else prediction[0]
    return prediction  # regression and token classification take no options


def saved_processor(folder: str, remedy: str):
    """The tokenizer or image processor saved in ``folder``; a ValueError saying ``remedy`` where none is."""
    saved = {name: os.path.isfile(os.path.join(folder, name)) for name in (IMAGE_PROCESSOR_NAME, TOKENIZER_CONFIG_FILE)}
    if not any(saved.values()):
        raise ValueError(f"{folder} holds no processor ({' or '.join(saved)}): {remedy}.")
    auto = AutoImageProcessor if saved[IMAGE_PROCESSOR_NAME] else AutoTokenizer
    return auto.from_pretrained(folder)
