"""The two-phase schedule of ``MDPDTrainer(state_cache=...)``: a side phase on cached states, then a fade phase.

While the LayerNorm copies learn, the backbone's states change and cannot come from a cache; the side
network, once trained, does not need the backbone's states to change. So training splits in two:

1. **Side phase** (``trainer.SidePhaseTrainer``): the side network and the distillation modules train on the
   ``StateCache`` (side task + feature distillation, ``MDPDModel.side_pass_on_cached_states``), with no
   backbone in the forward; everything else is frozen. Its own ``TrainingArguments`` (``side_phase_args``;
   by default the trainer's, writing to ``<output_dir>/side_phase``), optimizer, LR schedule, logs and
   checkpoints; at its end the adapter is saved to ``<side output_dir>/final``, which marks the phase done.
2. **Fade phase**: the trainer's own ``Trainer.train``, a normal MDPD pass through the backbone with the side
   network and distillation modules frozen, so only the backbone's trainables (LayerNorm copies, head)
   learn, from the combined MDPD loss or ``fade_loss(outputs, inputs)``. Which loss fades best is open
   (the lead's issue 16); the default is the live MDPD loss, whose side terms then train nothing.

Each phase has its own optimizer and LR schedule: their trainable parameters do not overlap, so AdamW
state of one phase has nothing to update in the other, and each phase warms up and decays over its own
steps. ``train(resume_from_checkpoint=True)`` resumes whichever phase was running: the fade phase from
its last checkpoint in ``output_dir``, else a finished side phase's ``final`` adapter, else the side
phase from its last checkpoint.

This module takes the trainer and its side-phase trainer as arguments and imports neither (``trainer.py``
imports it).
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path

from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import get_last_checkpoint

SIDE_PHASE_DIR = "side_phase"  # under the trainer's output_dir, unless side_phase_args say otherwise
SIDE_PHASE_RESULT = "final"  # under the side phase's output_dir: the adapter when the side phase ended
SIDE_PHASE_MARK = "side_phase.json"  # in each side-phase checkpoint, so that resuming from it resumes that phase


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


def train_side_then_fade(trainer, side_trainer, resume_from_checkpoint=None, **kwargs):
    """Run the side phase with ``side_trainer`` (unless done), then the fade phase with ``trainer`` (an
    ``MDPDTrainer``); see the module docstring."""
    if trainer.args.world_size > 1:
        raise ValueError("MDPDTrainer(state_cache=...) trains on one process: the side phase calls the tuner directly, outside DDP.")
    mdpd = trainer._mdpd_model()
    result_dir = Path(side_trainer.args.output_dir) / SIDE_PHASE_RESULT
    side_parameters = [*mdpd.mdpd_side.parameters(), *mdpd.mdpd_distill.parameters()]

    fade_checkpoint = side_checkpoint = None
    if resume_from_checkpoint is True:
        fade_checkpoint = get_last_checkpoint(trainer.args.output_dir) if os.path.isdir(trainer.args.output_dir) else None
        if fade_checkpoint is None and not result_dir.exists() and os.path.isdir(side_trainer.args.output_dir):
            side_checkpoint = get_last_checkpoint(side_trainer.args.output_dir)
    elif resume_from_checkpoint:
        in_side_phase = (Path(resume_from_checkpoint) / SIDE_PHASE_MARK).exists()
        side_checkpoint, fade_checkpoint = (resume_from_checkpoint, None) if in_side_phase else (None, resume_from_checkpoint)

    result = None
    if fade_checkpoint is None:
        if result_dir.exists():  # the side phase ended in an earlier run
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
    with frozen(side_parameters):
        return Trainer.train(trainer, resume_from_checkpoint=fade_checkpoint, **kwargs)
