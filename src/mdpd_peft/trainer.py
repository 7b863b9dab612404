"""MDPDTrainer: a transformers Trainer that logs every MDPD loss term, evaluates both paths and ships faded models."""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections import defaultdict

import torch
from peft import PeftModel
from transformers import Trainer, TrainerCallback
from transformers.trainer_pt_utils import nested_gather
from transformers.trainer_utils import speed_metrics

from .cached_training import TrainsOnCachedStates
from .config import invalid, is_real
from .forward_pass import SIDE_LOGITS_ARGUMENT
from .hub import ShipsFadedModel
from .memory import PeakMemory
from .model import MDPDModel
from .model_card import METRIC_PATHS
from .phases import FADE_SIDE_OUTPUTS, SIDE_PHASE_DIR, MarkSidePhaseCheckpoints, fade_data, frozen, train_side_then_fade
from .safe_saving import checkpoint_to_resume, replaced_files



class FirstStepPeakMemory(TrainerCallback):
    """Peak tensor memory of the run's first optimizer step: forward, backward and optimizer step.

    Measured once (``PeakMemory``: CUDA's allocator peak, or live tensor bytes on CPU), above what was
    allocated when the step began, so weights are excluded and the new optimizer state is included.
    """

    def __init__(self) -> None:
        self.peak_bytes: int | None = None
        self.device: str | None = None
        self._meter: PeakMemory | None = None

    def on_step_begin(self, args, state, control, **kwargs):
        if self.peak_bytes is None and self._meter is None:
            self._meter = PeakMemory(args.device)
            self._meter.start()

    def on_step_end(self, args, state, control, **kwargs):
        if self._meter is not None:
            self.peak_bytes, self.device = self._meter.stop(), str(args.device)
            self._meter = None

    on_train_end = on_step_end  # never leave the meter running after an interrupted first step


class SkipNonFiniteSteps(TrainerCallback):
    """``MDPDConfig(nonfinite_loss="skip")``: an optimizer step in which any process skipped a batch is skipped on
    every process, so the ranks stay identical: no gradient is left for the optimizer (AdamW then changes
    nothing, not even its state), or under fp16 loss scaling the gradients are marked non-finite so that the
    scaler skips the step as it does for an overflow."""

    def __init__(self, trainer: "MDPDTrainer") -> None:
        self.trainer = trainer
        self.skipped_in_step = False

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        trainer = self.trainer
        mdpd = trainer._mdpd_model()
        if mdpd.peft_config[mdpd.active_adapters[0]].nonfinite_loss != "skip":
            return
        skipped = torch.tensor(float(self.skipped_in_step), device=args.device)
        self.skipped_in_step = False
        if trainer.accelerator.reduce(skipped, reduction="sum").item() == 0:
            return
        for parameter in trainer.model.parameters():
            if trainer.accelerator.scaler is not None and parameter.grad is not None:
                parameter.grad.fill_(float("nan"))
            else:
                parameter.grad = None


def mdpd_tuner(model) -> MDPDModel:
    """The MDPD tuner of ``model``, which must come from ``get_peft_model(model, MDPDConfig(...))``."""
    if not isinstance(model, PeftModel) or not isinstance(model.base_model, MDPDModel):
        raise TypeError(f"MDPDTrainer needs a model returned by get_peft_model(model, MDPDConfig(...)); got {type(model).__name__}.")
    return model.base_model


class MDPDTrainer(ShipsFadedModel, Trainer):
    """A ``transformers.Trainer`` for models from ``get_peft_model(model, MDPDConfig(...))``.

    - Training optimises the model's combined MDPD loss and logs each term's share of it as ``loss_<term>``
      (``task``, ``shallow``, ``deep``, ``logits``, ``backbone_task``: the term times its weight in
      ``MDPDConfig``, mean since the last log), so that they add up to ``loss`` (not with a ``fade_loss``;
      ``fading="block_local"``'s ``loss_local`` is learnt layer by layer, outside it), and the side
      network's logged values (the ladder's gates as ``gate_<layer>``, SHERL's ``skip_gate``), at
      ``logging_steps`` like ``loss``.
    - ``evaluate()`` runs both paths with the user's ``compute_metrics``: ``eval_faded_<metric>`` is the
      backbone path (exactly what ``merge_and_unload()`` ships), ``eval_side_<metric>`` the side network.
      ``metric_for_best_model="loss"`` (the Trainer's default) means the faded model's loss.
    - Checkpoints are PEFT adapter checkpoints (side network, distillation modules, backbone
      trainables) plus the Trainer's optimizer, scheduler and RNG state, so ``resume_from_checkpoint``
      continues the run exactly.
    - ``save_faded_model()`` writes the plain faded model with a model card; ``push_to_hub()`` pushes that
      folder, not the adapter (``PeftModel.push_to_hub`` still pushes the adapter with PEFT's card).
    - ``state_cache`` (a ``StateCache`` of ``train_dataset``): ``train()`` first trains the side network on the
      cached backbone states (``side_phase_args``, default: these arguments with ``output_dir/side_phase``),
      then fades through the backbone with ``args`` and the side network frozen (``num_train_epochs=0``: the
      side phase only); see ``phases``. ``fade_side_outputs="stored"`` (default; sequence-level tasks) fades
      against the side network's logits stored once per example, without running it; ``"live"`` runs the full
      MDPD pass. ``fade_loss(outputs, inputs) -> loss`` replaces the loss of passes through the backbone.
    - ``teacher_logits`` (n, C), one row per ``train_dataset`` example: ``train()`` is the fade phase alone, Eq. 3's
      teacher these logits instead of the side network's (e.g. a trained kept side task's on the same examples,
      ``torch.as_tensor(side_task_trainer.predict(cache).predictions)``); the side network stays frozen and unused, so
      ``evaluate()`` runs the faded path alone. Not with a ``state_cache``; sequence-level tasks only.
    - ``side_learning_rate``: the side network and its distillation modules learn at this rate, the faded parameters
      (the backbone's LayerNorm copies and head) at ``args.learning_rate``; both follow the same schedule. The paper
      trains all at one rate; the two want different ones (on DINOv2 / Fashion-MNIST, LayerNorm tuning's best grid
      rate is 3e-2, where the side network's first epochs collapse). ``None`` (default): one rate. With a ``state_cache`` it is
      also the side phase's rate, unless ``side_phase_args`` are given.
    - Nothing is lost on save: the faded model, adapter saves and checkpoints are written to a staging folder and
      moved into place when complete; ``resume_from_checkpoint=True`` takes the last complete checkpoint.
    - A non-finite loss term stops training before the optimizer writes it into the weights, naming the term and
      the step (``MDPDConfig.nonfinite_loss="raise"``), or its step is skipped on every process (``"skip"``).
    """

    def __init__(
        self,
        model=None,
        args=None,
        *other_args,
        state_cache=None,
        side_phase_args=None,
        fade_loss=None,
        fade_side_outputs: str = "stored",
        side_learning_rate: float | None = None,
        teacher_logits: torch.Tensor | None = None,
        **kwargs,
    ) -> None:
        if model is not None:
            mdpd_tuner(model)  # before Trainer.__init__ creates output_dir
        if fade_side_outputs not in FADE_SIDE_OUTPUTS:
            raise invalid("fade_side_outputs", fade_side_outputs, f"one of {FADE_SIDE_OUTPUTS}", "MDPDTrainer")
        if side_learning_rate is not None and not (is_real(side_learning_rate) and side_learning_rate > 0):
            raise invalid("side_learning_rate", side_learning_rate, "a positive float, or None (args.learning_rate for every parameter)", "MDPDTrainer")
        if side_learning_rate is not None and kwargs.get("optimizers", (None, None))[0] is not None:
            raise ValueError("MDPDTrainer: side_learning_rate sets the rates of the optimizer it creates; pass it or an optimizer, not both.")
        if teacher_logits is not None and state_cache is not None:
            raise ValueError("MDPDTrainer: teacher_logits replace the side phase that a state_cache trains; pass one of them.")
        super().__init__(model, args, *other_args, **kwargs)
        self.state_cache, self.side_phase_args, self.fade_loss = state_cache, side_phase_args, fade_loss
        self.teacher_logits = teacher_logits
        self.side_learning_rate = side_learning_rate
        self.fade_side_outputs = fade_side_outputs
        self.user_callbacks = kwargs.get("callbacks")
        self.side_phase_trainer: MDPDTrainer | None = None  # set by train() with a state_cache
        mdpd = self._mdpd_model()  # a model from model_init
        if teacher_logits is not None:
            check_teacher_logits(teacher_logits, self.train_dataset, mdpd)
        if state_cache is not None and fade_side_outputs == "stored" and mdpd._per_token_task():
            task_type = mdpd.peft_config[mdpd.active_adapters[0]].task_type
            raise invalid("fade_side_outputs", fade_side_outputs, f"'live' for task_type={task_type!r}: stored side outputs are sequence-level logits", "MDPDTrainer")
        self.model_accepts_loss_kwargs = False  # the combined loss is a per-batch mean: scale it for accumulation
        if self.args.metric_for_best_model in ("loss", "eval_loss"):
            self.args.metric_for_best_model = "faded_loss"
        self._loss_term_sums: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros((), device=self.args.device))
        self._loss_term_batches = 0
        self._skipped_batches = 0
        self.step_memory = FirstStepPeakMemory()
        self.add_callback(self.step_memory)
        self.nonfinite_steps = SkipNonFiniteSteps(self)
        self.add_callback(self.nonfinite_steps)
        self.last_eval_metrics: dict[str, float] = {}
        self._last_eval_prefix = "eval"

    def _peft_model(self) -> PeftModel:
        return self.accelerator.unwrap_model(self.model)

    def _mdpd_model(self) -> MDPDModel:
        return mdpd_tuner(self._peft_model())

    # --------------------------------------------------------------------------------------- training

    def train(self, resume_from_checkpoint=None, trial=None, **kwargs):
        """``Trainer.train``, or with a ``state_cache`` the side phase then the fade phase (``phases``).

        Without a cache, ``resume_from_checkpoint=True`` takes the last *complete* checkpoint (one whose save was cut
        short is skipped with a warning), and a named incomplete one is refused, naming what it lacks."""
        if self.state_cache is not None:
            self.side_phase_trainer = self._side_phase_trainer()
            return train_side_then_fade(self, self.side_phase_trainer, resume_from_checkpoint, **kwargs)
        resume_from_checkpoint = checkpoint_to_resume(resume_from_checkpoint, self.args.output_dir)
        if self.teacher_logits is not None:  # the fade phase alone, against the given teacher
            with frozen(self._mdpd_model().side_parameters()), fade_data(self, self.teacher_logits):
                return super().train(resume_from_checkpoint=resume_from_checkpoint, trial=trial, **kwargs)
        return super().train(resume_from_checkpoint=resume_from_checkpoint, trial=trial, **kwargs)

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        """``Trainer.create_optimizer``; with ``side_learning_rate`` each of its parameter groups is split in two, the side
        network's and distillation modules' parameters at that rate (the scheduler then scales both rates alike)."""
        splits = self.optimizer is None and self.side_learning_rate is not None
        optimizer = super().create_optimizer(model)
        if splits:
            side = {id(p) for p in self._mdpd_model().side_parameters()}
            groups = [
                {**group, "params": params, **({"lr": self.side_learning_rate} if is_side else {})}
                for is_side in (False, True)  # the faded parameters' groups first: the Trainer logs the first group's rate
                for group in optimizer.param_groups
                if (params := [p for p in group["params"] if (id(p) in side) == is_side])
            ]
            optimizer.param_groups.clear()
            for group in groups:
                optimizer.add_param_group(group)
        return optimizer

    def _side_phase_trainer(self) -> "SidePhaseTrainer":
        side_rate = {} if self.side_learning_rate is None else {"learning_rate": self.side_learning_rate}
        args = self.side_phase_args or dataclasses.replace(self.args, output_dir=os.path.join(self.args.output_dir, SIDE_PHASE_DIR), **side_rate)
        return SidePhaseTrainer(
            model=self.model,
            args=args,
            state_cache=self.state_cache,
            live_collator=self.data_collator,
            eval_dataset=self.eval_dataset,
            processing_class=self.processing_class,
            compute_metrics=self.compute_metrics,
            callbacks=self.user_callbacks,
        )

    def _set_signature_columns_if_needed(self) -> None:
        """The fade phase's stored side logits are a column the tuner takes, not the transformers model."""
        super()._set_signature_columns_if_needed()
        if SIDE_LOGITS_ARGUMENT not in self._signature_columns:
            self._signature_columns.append(SIDE_LOGITS_ARGUMENT)

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        """Adapter saves (``save_model``, checkpoints) go through a staging folder: no file is ever half-written."""
        with replaced_files(output_dir if output_dir is not None else self.args.output_dir) as staging:
            super()._save(staging, state_dict)

    def compute_loss(self, model, inputs, return_outputs: bool = False, num_items_in_batch=None):
        try:
            loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        except FloatingPointError as error:  # MDPDConfig.nonfinite_loss="raise": add the optimizer step
            raise FloatingPointError(f"{error} (Trainer step {self.state.global_step + 1})") from error
        if self.fade_loss is not None and model.training:
            loss = self.fade_loss(outputs, inputs)
        self._record_loss_terms(model)
        return (loss, outputs) if return_outputs else loss

    def _record_loss_terms(self, model) -> None:
        mdpd = self._mdpd_model()
        terms = mdpd.latest_losses  # not `outputs.mdpd_losses`: DDP may rebuild `outputs` without it
        if model.training and mdpd.latest_skipped:  # logged as skipped, not averaged into the terms
            self.nonfinite_steps.skipped_in_step = True
            self._skipped_batches += 1
        elif model.training and terms:
            weights = mdpd.peft_config[mdpd.active_adapters[0]].loss_weights
            for name, value in terms.items():  # weighted, to add up to the logged loss; "local" is outside it
                self._loss_term_sums[name] += weights.get(name, 1.0) * value.float()
            self._loss_term_batches += 1

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Training logs (those with ``loss``) gain the MDPD loss terms and the side network's logged values (not with
        ``teacher_logits``)."""
        if "loss" in logs and self._skipped_batches:
            logs["skipped_batches"] = self._skipped_batches  # non-finite loss terms (MDPDConfig.nonfinite_loss="skip")
            if not self._loss_term_batches:  # the Trainer's NaN filter would log 0.0
                logs["loss"] = float("nan")
            self._skipped_batches = 0
        if "loss" in logs and self._loss_term_batches:
            for name, total in self._loss_term_sums.items():
                logs[f"loss_{name}"] = nested_gather(total / self._loss_term_batches, self.args.parallel_mode).mean().item()
            self._loss_term_sums.clear()
            self._loss_term_batches = 0
            if self.teacher_logits is None:  # with given teacher logits the side network is not part of the run
                mdpd = self._mdpd_model()
                logs.update(mdpd.mdpd_side[mdpd.active_adapters[0]].logged_values())  # the ladder's gates
        super().log(logs, start_time)

    # ------------------------------------------------------------------------------------- evaluation

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """Evaluate the faded (backbone) path and the side path on the same data; one log, one ``on_evaluate``. With
        ``teacher_logits`` the side network is not part of the run: the faded path alone."""
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if isinstance(dataset, dict):  # Trainer.evaluate calls back here once per named dataset
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)

        self._memory_tracker.start()
        dataloader = self.get_eval_dataloader(eval_dataset)
        mdpd = self._mdpd_model()
        config = mdpd.peft_config[mdpd.active_adapters[0]]
        previous_path = config.eval_path
        paths = {"faded": METRIC_PATHS["faded"]} if self.teacher_logits is not None else METRIC_PATHS
        metrics: dict[str, float] = {}
        start_time = time.time()
        try:
            for name, path in paths.items():
                mdpd.set_eval_path(path)
                output = self.evaluation_loop(
                    dataloader,
                    description=f"Evaluation ({name} path)",
                    prediction_loss_only=True if self.compute_metrics is None else None,
                    ignore_keys=ignore_keys,
                    metric_key_prefix=f"{metric_key_prefix}_{name}",
                )
                metrics.update(output.metrics)
        finally:
            mdpd.set_eval_path(previous_path)
        batch_size = self.args.eval_batch_size * self.args.world_size
        steps = len(paths) * math.ceil(output.num_samples / batch_size)
        metrics.update(speed_metrics(metric_key_prefix, start_time, num_samples=len(paths) * output.num_samples, num_steps=steps))

        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        self._memory_tracker.stop_and_update_metrics(metrics)
        self.last_eval_metrics, self._last_eval_prefix = metrics, metric_key_prefix
        return metrics


class SidePhaseTrainer(TrainsOnCachedStates, MDPDTrainer):
    """The side phase of ``MDPDTrainer(state_cache=...)`` (``phases``): each step is ``side_pass_on_cached_states`` on a
    collated batch of cached states; evaluation runs both paths through the backbone on the live eval data."""

    def __init__(self, *args, state_cache, live_collator, **kwargs):
        super().__init__(*args, train_dataset=state_cache, data_collator=state_cache.collate, **kwargs)
        self.cache = state_cache
        self.live_collator = live_collator
        self.add_callback(MarkSidePhaseCheckpoints)

    def cached_side_pass(self, model, batch):
        side_pass = self._mdpd_model().side_pass_on_cached_states(batch)
        self._record_loss_terms(model)
        return side_pass


def check_teacher_logits(logits, train_dataset, mdpd: MDPDModel) -> None:
    """``MDPDTrainer(teacher_logits=...)``: a (n, C) tensor, a row per training example, for a sequence-level task."""
    if not (isinstance(logits, torch.Tensor) and logits.dim() == 2 and logits.is_floating_point()):
        raise invalid("teacher_logits", type(logits).__name__, "a float tensor (examples, classes), or None", "MDPDTrainer")
    if train_dataset is None or len(logits) != len(train_dataset):
        raise ValueError(f"MDPDTrainer: teacher_logits has {len(logits)} rows; expected one per train_dataset example ({None if train_dataset is None else len(train_dataset)}).")
    if mdpd._per_token_task():
        raise ValueError("MDPDTrainer: teacher_logits are sequence-level logits; a token-level task fades against its side network (no teacher_logits).")
    classes = getattr(getattr(mdpd.model, "config", None), "num_labels", None)
    if classes is not None and logits.shape[1] != classes:
        raise ValueError(f"MDPDTrainer: teacher_logits has {logits.shape[1]} columns; the model's head has num_labels={classes}.")
