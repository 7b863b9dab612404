"""Saves that never leave a half-written model behind, and the checkpoints a resumed run may trust.

transformers and PEFT write into the target folder in place: a fault mid-save (a full disk, a killed job)
destroys the model that was there and leaves files that fail to load, or a checkpoint folder that
``resume_from_checkpoint=True`` picks as the latest. Here every save goes to a staging folder beside the
target first and is moved into place only once it is complete (a rename on the same filesystem).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from contextlib import contextmanager
from typing import Iterator

from peft.utils import SAFETENSORS_WEIGHTS_NAME, WEIGHTS_NAME
from safetensors import SafetensorError, safe_open
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

TRAINER_STATE_NAME = "trainer_state.json"  # the Trainer writes it last into a checkpoint


@contextmanager
def staging_folder(target: str | os.PathLike) -> Iterator[str]:
    """An empty folder beside ``target`` to save into; removed again if the block fails."""
    target = os.path.abspath(target)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.staging-", dir=os.path.dirname(target))
    os.chmod(staging, 0o755)
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone or empty after a success


@contextmanager
def replaced_folder(target: str | os.PathLike) -> Iterator[str]:
    """Yields a staging folder; once the block succeeds it replaces ``target`` as a whole (the old folder is renamed
    aside, then deleted). If the block fails, ``target`` is left as it was."""
    target = os.path.abspath(target)
    with staging_folder(target) as staging:
        yield staging
        previous = None
        if os.path.exists(target):
            previous = f"{staging}.previous"
            os.rename(target, previous)
        os.rename(staging, target)
        if previous is not None:
            shutil.rmtree(previous)


@contextmanager
def replaced_files(target: str | os.PathLike) -> Iterator[str]:
    """Yields a staging folder; once the block succeeds each file saved there replaces its namesake in ``target``
    (``os.replace``, atomic per file), so a folder that also holds other files (a Trainer's output_dir, a
    checkpoint) never holds a half-written one. If the block fails, ``target`` is left as it was."""
    target = os.path.abspath(target)
    with staging_folder(target) as staging:
        yield staging
        for folder, _, files in os.walk(staging):
            destination = os.path.join(target, os.path.relpath(folder, staging))
            os.makedirs(destination, exist_ok=True)
            for name in files:
                os.replace(os.path.join(folder, name), os.path.join(destination, name))


def incomplete_reason(checkpoint: str | os.PathLike) -> str | None:
    """Why a Trainer checkpoint folder cannot be resumed from (its save was cut short), or None if it is complete."""
    try:
        with open(os.path.join(checkpoint, TRAINER_STATE_NAME)) as state:
            json.load(state)
    except (OSError, ValueError):
        return f"no readable {TRAINER_STATE_NAME}, which the Trainer writes last"
    if os.path.isfile(os.path.join(checkpoint, WEIGHTS_NAME)):
        return None
    try:
        with safe_open(os.path.join(checkpoint, SAFETENSORS_WEIGHTS_NAME), framework="pt") as weights:
            weights.keys()
    except (SafetensorError, OSError) as error:
        return f"{SAFETENSORS_WEIGHTS_NAME} cannot be read ({error})"
    return None


def checkpoint_folders(output_dir: str | os.PathLike) -> list[str]:
    """The ``checkpoint-<step>`` folders in ``output_dir``, by step."""
    if not os.path.isdir(output_dir):
        return []
    steps = [name.removeprefix(f"{PREFIX_CHECKPOINT_DIR}-") for name in os.listdir(output_dir) if name.startswith(f"{PREFIX_CHECKPOINT_DIR}-")]
    folders = [os.path.join(output_dir, f"{PREFIX_CHECKPOINT_DIR}-{step}") for step in sorted(int(s) for s in steps if s.isdigit())]
    return [folder for folder in folders if os.path.isdir(folder)]


def checkpoint_to_resume(resume_from_checkpoint, output_dir: str | os.PathLike):
    """``Trainer.train``'s ``resume_from_checkpoint``, made safe: ``True`` becomes the last *complete* checkpoint in
    ``output_dir`` (one whose save was cut short is skipped with a warning; none raises), and a named folder that is
    incomplete is refused, naming what it lacks. Anything else is returned as it is."""
    if resume_from_checkpoint is True:
        complete = []
        for folder in checkpoint_folders(output_dir):
            reason = incomplete_reason(folder)
            if reason is None:
                complete.append(folder)
            else:
                warnings.warn(f"Not resuming from {folder}: {reason} (its save was cut short).", stacklevel=3)
        if not complete:
            raise ValueError(f"resume_from_checkpoint=True, but {output_dir} holds no complete checkpoint to resume from.")
        return complete[-1]
    if resume_from_checkpoint is not None and not isinstance(resume_from_checkpoint, bool):
        reason = incomplete_reason(resume_from_checkpoint) if os.path.isdir(resume_from_checkpoint) else "no such folder"
        if reason is not None:
            raise ValueError(
                f"resume_from_checkpoint={str(resume_from_checkpoint)!r} cannot be resumed from: {reason}. Complete checkpoints in "
                f"{output_dir}: {[f for f in checkpoint_folders(output_dir) if incomplete_reason(f) is None]}."
            )
    return resume_from_checkpoint
