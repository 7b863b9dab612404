"""A side-task bundle: every task of one encoder saved as its own PEFT adapter in one folder (or Hub repository)."""

from __future__ import annotations

import json
import os
import tempfile

from huggingface_hub import HfApi, snapshot_download
from peft import PeftModel
from peft.utils import CONFIG_NAME, PeftType
from torch import nn

from ..hub import ADAPTER_FILES
from ..safe_saving import replaced_folder
from .model import side_task_model_of
from .model_card import side_task_card


def adapter_type(folder: str) -> str | None:
    """The ``peft_type`` of the adapter saved in ``folder``, or ``None`` where no adapter is saved."""
    path = os.path.join(folder, CONFIG_NAME)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as file:
        return json.load(file).get("peft_type")


def bundle_tasks(folder: str) -> dict[str, str]:
    """Task name -> the folder of its adapter. PEFT's ``save_pretrained`` writes the adapter named ``"default"`` at
    the root and every other one in a subfolder named after it; both are read. Fails on a folder holding no side
    task, or an adapter of another PEFT method, saying what the folder holds."""
    candidates = {"default": folder} | {entry.name: entry.path for entry in sorted(os.scandir(folder), key=lambda e: e.name) if entry.is_dir()}
    types = {name: kind for name, path in candidates.items() if (kind := adapter_type(path)) is not None}
    others = {name: kind for name, kind in types.items() if kind != PeftType.SIDE_TASK}
    if others:
        raise ValueError(f"{folder} holds adapters that are no side tasks: {others} (peft_type per adapter). A side-task bundle holds SIDE_TASK adapters only.")
    if not types:
        raise ValueError(
            f"{folder} is no side-task bundle: it holds no {CONFIG_NAME} of a side task, at its root or in a subfolder "
            f"(save one with save_side_tasks). It holds: {sorted(os.listdir(folder))}."
        )
    return {name: candidates[name] for name in types}


def local_bundle(folder: str | os.PathLike) -> str:
    """``folder`` itself, or the local copy of the Hub repository of that id."""
    folder = os.fspath(folder)
    return folder if os.path.isdir(folder) else snapshot_download(folder)


def load_side_tasks(encoder: nn.Module, folder: str | os.PathLike, tasks: list[str] | None = None, is_trainable: bool = False) -> PeftModel:
    """Load the tasks of a bundle (``save_side_tasks``' folder, or a Hub repository id) onto ``encoder``.

    Every task (or those named in ``tasks``) becomes an adapter of one ``PeftModel``, and all of them are active, so
    one call runs them all on one encoder pass. Each task's saved encoder fingerprint is checked: a task trained on
    another encoder fails before anything is attached. ``is_trainable=False`` (default) loads in inference mode.
    """
    folder = local_bundle(folder)
    found = bundle_tasks(folder)
    names = list(found) if tasks is None else [tasks] if isinstance(tasks, str) else list(tasks)
    unknown = [name for name in names if name not in found]
    if unknown or not names:
        raise ValueError(f"tasks={tasks!r} names task(s) {unknown} that {folder} does not hold: it holds the tasks {list(found)}.")
    first, *rest = names
    model = PeftModel.from_pretrained(encoder, found[first], adapter_name=first, is_trainable=is_trainable)
    for name in rest:
        model.load_adapter(found[name], adapter_name=name, is_trainable=is_trainable)
    model.base_model.set_adapter(names, inference_mode=not is_trainable)
    return model


def save_side_tasks(model: PeftModel, folder: str | os.PathLike, metrics: dict[str, dict[str, float]] | None = None, processor=None, model_name: str | None = None) -> str | os.PathLike:
    """Save every task of ``model`` as its own adapter, the ``processor`` (tokenizer or image processor, so that
    ``SideTaskPipeline.from_pretrained`` finds it) and a model card listing the tasks with their ``metrics``
    (task -> metric -> value, as measured by the caller). ``folder`` is replaced as a whole, so no task deleted
    since an earlier save lingers there. Returns ``folder``."""
    tuner = side_task_model_of(model)
    unknown = [name for name in metrics or {} if name not in tuner.tasks]
    if unknown:
        raise ValueError(f"metrics name task(s) {unknown} that the model does not have: it has the tasks {tuner.tasks}.")
    with replaced_folder(folder) as staging:
        model.save_pretrained(staging)
        if processor is not None:
            processor.save_pretrained(staging)
        side_task_card(tuner, metrics, model_name, with_processor=processor is not None).save(os.path.join(staging, "README.md"))
    return folder


def push_side_tasks_to_hub(
    model: PeftModel,
    repo_id: str,
    metrics: dict[str, dict[str, float]] | None = None,
    processor=None,
    token: str | None = None,
    private: bool | None = None,
    commit_message: str = "Upload side-task bundle",
    model_name: str | None = None,
):
    """Push the bundle (``save_side_tasks``) to the Hub repository ``repo_id``, created if need be, in one commit.

    Adapter files of tasks the model no longer has are deleted in that commit, so ``load_side_tasks(encoder,
    repo_id)`` loads exactly the pushed tasks. Returns the commit's information (``upload_folder``'s).
    """
    api = HfApi(library_name="mdpd-peft")
    api.create_repo(repo_id, token=token, private=private, exist_ok=True)
    with tempfile.TemporaryDirectory() as temporary:
        folder = save_side_tasks(model, os.path.join(temporary, "bundle"), metrics, processor, model_name)
        return api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            commit_message=commit_message,
            token=token,
            delete_patterns=[f"*{name}" for name in ADAPTER_FILES],
        )
