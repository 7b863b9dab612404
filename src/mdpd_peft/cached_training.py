"""What a Trainer that trains on a ``StateCache`` needs: cached batches go to the side pass; evaluation is live, or on
a cache of the evaluation split."""

from __future__ import annotations

from contextlib import contextmanager

from transformers.trainer_pt_utils import LengthGroupedSampler

from .state_cache import StateCache


class TrainsOnCachedStates:
    """``transformers.Trainer`` mixin: the training batches are ``self.cache``'s (collated by ``cache.collate``, no
    argument of the model's forward, so no column is removed); an evaluation (or ``predict``) dataset is collated by
    ``self.live_collator`` (what the model computes when it serves), or, where it is a ``StateCache`` itself, by its own
    ``collate``. A cached batch's loss and logits are ``cached_side_pass``'s (the subclass's); a live batch's the
    model's own forward's."""

    cache = None
    live_collator = None

    def _get_collator_with_removed_columns(self, data_collator, description=None):
        if isinstance(getattr(data_collator, "__self__", None), StateCache):
            return data_collator
        return super()._get_collator_with_removed_columns(data_collator, description)

    def length_grouped_sampler(self, dataset, batch_size: int) -> LengthGroupedSampler | None:
        """``train_sampling_strategy="group_by_length"`` on a cache: transformers' sampler, given each example's length
        from the shards' offsets (its own way reads every example's ``input_ids``, which a cache has not); else None."""
        if isinstance(dataset, StateCache) and self.args.train_sampling_strategy == "group_by_length":
            return LengthGroupedSampler(batch_size, lengths=dataset.lengths)
        return None

    def _get_train_sampler(self, train_dataset=None):
        dataset = self.train_dataset if train_dataset is None else train_dataset
        sampler = self.length_grouped_sampler(dataset, self.args.train_batch_size * self.args.gradient_accumulation_steps)
        return sampler if sampler is not None else super()._get_train_sampler(train_dataset)

    def _get_eval_sampler(self, eval_dataset):
        sampler = self.length_grouped_sampler(eval_dataset, self.args.eval_batch_size)  # transformers groups evaluation too
        return sampler if sampler is not None else super()._get_eval_sampler(eval_dataset)

    def get_eval_dataloader(self, eval_dataset=None):
        dataset = self.eval_dataset if eval_dataset is None else eval_dataset
        dataset = self.eval_dataset[dataset] if isinstance(dataset, str) else dataset
        with self.collating(dataset):
            return super().get_eval_dataloader(eval_dataset)

    def get_test_dataloader(self, test_dataset):
        """``predict``'s data, collated as evaluation's: live data by ``live_collator``, a cache by its ``collate``."""
        with self.collating(test_dataset):
            return super().get_test_dataloader(test_dataset)

    @contextmanager
    def collating(self, dataset):
        """The Trainer's ``data_collator`` is ``dataset``'s (its ``collate`` for a cache, else ``live_collator``) inside."""
        training_collator = self.data_collator
        self.data_collator = dataset.collate if isinstance(dataset, StateCache) else self.live_collator
        try:
            yield
        finally:
            self.data_collator = training_collator

    def compute_loss(self, model, inputs, return_outputs: bool = False, num_items_in_batch=None):
        if "hidden_states" not in inputs:  # a live batch: evaluation's
            return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        side_pass = self.cached_side_pass(model, inputs)
        return (side_pass.loss, {"loss": side_pass.loss, "logits": side_pass.logits}) if return_outputs else side_pass.loss

    def cached_side_pass(self, model, batch):
        """The side pass on a collated batch of cached states (its ``loss`` and ``logits``)."""
        raise NotImplementedError
