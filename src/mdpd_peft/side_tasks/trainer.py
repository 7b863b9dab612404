"""SideTaskTrainer: a transformers Trainer that trains one task of a side-task model, on cached states or live."""

from __future__ import annotations

import logging

import torch
from transformers import Trainer

from ..cached_training import TrainsOnCachedStates
from ..state_cache import StateCache
from .model import side_task_model_of

logger = logging.getLogger(__name__)


class SideTaskTrainer(TrainsOnCachedStates, Trainer):
    """Train ``task`` of a ``get_peft_model(encoder, SideTaskConfig(...))`` model; every other task stays as it is.

    - ``train_dataset`` a ``StateCache`` (``build_state_cache``, or ``cache.with_targets(model, dataset)`` for a
      second task on the same inputs): each step is the task's side network and head on a batch of cached encoder
      states (``SideTaskModel.side_pass_on_cached_states``), with no encoder in the forward. A side network that
      re-runs encoder layers (SHERL, DTL) cannot: give it the tokenized dataset, and it trains live (said in the log).
    - ``train_dataset`` a dataset: each step runs the frozen encoder (no activation stored) and the task.
    - Evaluation runs live on ``eval_dataset`` with ``data_collator``: what serving computes. An evaluation dataset
      that is a ``StateCache`` (``build_state_cache`` of the evaluation split) is evaluated on its states with no
      encoder in the loop, by the side pass training uses: per epoch, seconds instead of an encoder pass over the
      split; the states are stored in the cache's dtype (bfloat16 by default), so a score can differ from serving's
      by that rounding.

    ``label_names`` default to ``["labels"]`` (the bare encoder's forward names no labels, so the Trainer would
    otherwise find none). Checkpoints and ``save_model`` save every task as its own adapter folder.
    """

    def __init__(self, model=None, args=None, task: str | None = None, data_collator=None, train_dataset=None, **kwargs):
        tuner = side_task_model_of(model)
        task = task if task is not None else tuner.active_adapters[0]
        if tuner.active_adapters != [task]:
            tuner.set_adapter(task)  # the one task that runs and trains
        if args is not None and args.label_names is None:
            args.label_names = ["labels"]
        self.cache = train_dataset if isinstance(train_dataset, StateCache) else None
        evaluation = kwargs.get("eval_dataset")
        for cache in [self.cache, *(evaluation.values() if isinstance(evaluation, dict) else [evaluation])]:
            if isinstance(cache, StateCache):
                cache.check(model)
        if self.cache is None:
            logger.info("SideTaskTrainer: task %r trains live (the encoder runs in every step): no state cache was given.", task)
        super().__init__(model, args, data_collator=data_collator, train_dataset=train_dataset, **kwargs)
        self.task = task
        self.live_collator = self.data_collator  # the user's, or the Trainer's default for the processing class
        if self.cache is not None:
            self.data_collator = self.cache.collate

    def train(self, resume_from_checkpoint=None, **kwargs):
        """Train the task; a fresh run of a task whose config says ``head_init="probe"`` first fits its head's classifier
        as the probe (``fit_head_as_probe``)."""
        tuner = side_task_model_of(self.model)
        if resume_from_checkpoint is None and tuner.peft_config[self.task].head_init == "probe":
            self.fit_head_as_probe()
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    @torch.no_grad()
    def fit_head_as_probe(self) -> None:
        """Fit the task head's classifier, before any step, to a logistic regression on what it reads for the training
        set (``TaskHead.fit_classifier_as_probe``): with the gate shut that is the encoder's pooled representation, so
        training starts from the linear probe instead of a random classifier (LP-FT, Kumar et al. 2022). One pass
        over the training set, forward only (the cache's states, or the encoder live). Single-label sequence
        classification only; other problem types keep the random classifier."""
        tuner = side_task_model_of(self.model)
        config, head = tuner.peft_config[self.task], tuner.kept_tasks[self.task].head
        if config.problem_type != "single_label_classification":
            logger.info("SideTaskTrainer: head_init='probe' fits single-label classifiers only; task %r (%s) starts random.", self.task, config.problem_type)
            return
        features, labels = [], []
        handle = head.classifier.register_forward_pre_hook(lambda module, args: features.append(args[0].detach().float().cpu()))
        training = self.model.training
        self.model.eval()  # no dropout: the classifier is fitted to what it reads at inference
        try:
            for batch in self.get_train_dataloader():
                labels.append(batch["labels"].cpu())
                self.compute_loss(self.model, self._prepare_inputs(batch))
        finally:
            handle.remove()
            self.model.train(training)
        head.fit_classifier_as_probe(torch.cat(features), torch.cat(labels))

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """The trained task's logits are the predictions (not every task's, nor the encoder's states)."""
        ignore_keys = ["task_logits", "last_hidden_state"] if ignore_keys is None else ignore_keys
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)

    def cached_side_pass(self, model, batch):
        return side_task_model_of(model).side_pass_on_cached_states(batch)
