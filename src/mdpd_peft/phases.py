"""The two-phase schedule of ``MDPDTrainer(state_cache=...)``: a side phase on cached states, then a fade phase.

The paper trains both paths jointly; this is its "alternating optimization" as a fast path. While the LayerNorm
copies learn, the backbone's states change and cannot come from a cache; the side network, once trained, does
not need the backbone's states to change. So training splits in two:

1. **Side phase** (``trainer.SidePhaseTrainer``): the side network and the distillation modules train on the
   ``StateCache`` (side task + feature distillation, ``MDPDModel.side_pass_on_cached_states``), with no
   backbone in the forward; everything else is frozen. Its own ``TrainingArguments`` (``side_phase_args``;
   by default the trainer's, writing to ``<output_dir>/side_phase``), optimizer, LR schedule, logs and
   checkpoints; at its end the adapter is saved to ``<side output_dir>/final``, which marks the phase done.
2. **Fade phase**: the trainer's own ``Trainer.train`` through the backbone with the side network and the
   distillation modules frozen, so only the backbone's trainables (LayerNorm copies, head) learn. Frozen, the
   side network's logits (Eq. 3's teacher) depend on the input alone, so by default
   (``fade_side_outputs="stored"``) they are computed once per example, in eval mode, on the cached states
   (``StateCache.store_side_outputs``) and each training batch carries its examples' (``mdpd_side_logits``):
   a fade step runs the backbone and its losses only (Eq. 3 + the backbone task loss), no side network and no
   state capture, and costs what a LayerNorm-tuning step costs. The side terms (side task, Eq. 1-2, 4-7) train
   only what is frozen, so they are dropped. The teacher this makes is the side network on the *frozen*
   backbone's states, fixed for the phase; ``fade_side_outputs="live"`` runs the full MDPD pass instead, whose
   side network reads the current (LayerNorm-copy-adapted) states each step. ``fade_loss(outputs, inputs)``
   replaces either loss (``inputs`` holds the stored logits).

Each phase has its own optimizer and LR schedule: their trainable parameters do not overlap, so AdamW
state of one phase has nothing to update in the other, and each phase warms up and decays over its own
steps. ``train(resume_from_checkpoint=True)`` resumes whichever phase was running: the fade phase from
its last checkpoint in ``output_dir``, else a finished side phase's ``final`` adapter, else the side
phase from its last checkpoint. ``train()`` without it trains both phases anew, as ``Trainer.train`` does,
whatever an earlier run left in the output folders.

This module takes the trainer and its side-phase trainer as arguments and imports neither (``trainer.py``
imports it).
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path

import torch
from torch.utils.data import Dataset
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import get_last_checkpoint

from .forward_pass import SIDE_LOGITS_ARGUMENT
from .state_cache import StaleStateCacheError

SIDE_PHASE_DIR = "side_phase"  # under the trainer's output_dir, unless side_phase_args say otherwise
SIDE_PHASE_RESULT = "final"  # under the side phase's output_dir: the adapter when the side phase ended
SIDE_PHASE_MARK = "side_phase.json"  # in each side-phase checkpoint, so that resuming from it resumes that phase
FADE_SIDE_OUTPUTS = ("stored", "live")  # MDPDTrainer(fade_side_outputs=...)


@contextmanager
def frozen(parameters):
    """Hold ``parameters`` still for the block: their ``requires_grad`` is turned off and restored after."""
    trainable = [p for p in parameters if p.requires_grad]
    for parameter in trainable:
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        for parameter in trainable:
            parameter.requires_grad_(True)


class MarkSidePhaseCheckpoints(TrainerCallback):
    def on_save(self, args, state, control, **kwargs):
        if args.should_save:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            (folder / SIDE_PHASE_MARK).write_text(json.dumps({"global_step": state.global_step}))


class WithStoredSideLogits(Dataset):
    """The train dataset, each example with its stored side logits (C,) as ``mdpd_side_logits``. The cache holds
    the train dataset's examples in order (``StateCache.check`` compares their inputs), so example i's are row i."""

    def __init__(self, dataset, logits: torch.Tensor):
        if len(logits) != len(dataset):
            raise StaleStateCacheError(f"The stored side outputs cover {len(logits)} examples, the train dataset has {len(dataset)}.")
        self.dataset, self.logits = dataset, logits  # logits: (n, C)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        return {**self.dataset[index], SIDE_LOGITS_ARGUMENT: self.logits[index]}


class SideLogitsCollator:
    """The trainer's collator on the dataset's own columns, with the stored side logits stacked beside, (B, C);
    evaluation's examples, which carry none, are collated as they are."""

    def __init__(self, collator):
        self.collator = collator

    def __call__(self, features: list[dict]) -> dict:
        if SIDE_LOGITS_ARGUMENT not in features[0]:
            return self.collator(features)
        batch = self.collator([{k: v for k, v in feature.items() if k != SIDE_LOGITS_ARGUMENT} for feature in features])
        batch[SIDE_LOGITS_ARGUMENT] = torch.stack([feature[SIDE_LOGITS_ARGUMENT] for feature in features])
        return batch


def stored_side_logits(cache, model) -> torch.Tensor:
    """The side network's logits on the cache, (n, C): read when this side network's are stored (a resumed run),
    else computed and stored now."""
    try:
        return cache.side_outputs(model)
    except (FileNotFoundError, StaleStateCacheError):
        return cache.store_side_outputs(model)


@contextmanager
def fade_data(trainer, teacher_logits: torch.Tensor | None = None):
    """``fade_side_outputs="stored"``: the trainer's train dataset and collator carry the stored side logits for
    the block; ``"live"``: left as they are. ``teacher_logits`` (n, C): these instead of the side network's."""
    if teacher_logits is None and trainer.fade_side_outputs == "live":
        yield
        return
    dataset, collator = trainer.train_dataset, trainer.data_collator
    logits = teacher_logits if teacher_logits is not None else stored_side_logits(trainer.state_cache, trainer.model)
    trainer.train_dataset = WithStoredSideLogits(dataset, logits)
    trainer.data_collator = SideLogitsCollator(collator)
    try:
        yield
    finally:
        trainer.train_dataset, trainer.data_collator = dataset, collator


def train_side_then_fade(trainer, side_trainer, resume_from_checkpoint=None, **kwargs):
    """Run the side phase with ``side_trainer`` (unless done), then the fade phase with ``trainer`` (an
    ``MDPDTrainer``); see the module docstring."""
    if trainer.args.world_size > 1:
        raise ValueError("MDPDTrainer(state_cache=...) trains on one process: the side phase calls the tuner directly, outside DDP.")
    mdpd = trainer._mdpd_model()
    result_dir = Path(side_trainer.args.output_dir) / SIDE_PHASE_RESULT
    side_parameters = mdpd.side_parameters()

    fade_checkpoint = side_checkpoint = None
    if resume_from_checkpoint is True:
        fade_checkpoint = get_last_checkpoint(trainer.args.output_dir) if os.path.isdir(trainer.args.output_dir) else None
        if fade_checkpoint is None and not result_dir.exists() and os.path.isdir(side_trainer.args.output_dir):
            side_checkpoint = get_last_checkpoint(side_trainer.args.output_dir)
    elif resume_from_checkpoint:
        in_side_phase = (Path(resume_from_checkpoint) / SIDE_PHASE_MARK).exists()
        side_checkpoint, fade_checkpoint = (resume_from_checkpoint, None) if in_side_phase else (None, resume_from_checkpoint)

    result = None
    if fade_checkpoint is not None:
        trainer._load_from_checkpoint(fade_checkpoint)  # its side network is the fade phase's teacher
    elif resume_from_checkpoint is True and result_dir.exists():  # the side phase ended in the run resumed
        trainer._load_from_checkpoint(str(result_dir))
    else:
        trainer.state_cache.check(trainer.model, trainer.train_dataset)
        side_ids = {id(p) for p in side_parameters}
        with frozen(p for p in trainer.model.parameters() if id(p) not in side_ids):
            result = side_trainer.train(resume_from_checkpoint=side_checkpoint, **kwargs)
        if side_trainer.args.should_save:
            trainer.model.save_pretrained(result_dir)
    if trainer.args.num_train_epochs == 0 and trainer.args.max_steps <= 0:
        return result  # side phase only
    with frozen(side_parameters), fade_data(trainer):
        return Trainer.train(trainer, resume_from_checkpoint=fade_checkpoint, **kwargs)
