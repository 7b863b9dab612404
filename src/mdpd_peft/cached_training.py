"""What a Trainer that trains on a ``StateCache`` needs: cached batches go to the loss as they are, evaluation is live."""

from __future__ import annotations


class TrainsOnCachedStates:
    """``transformers.Trainer`` mixin: the training batches are ``self.cache``'s (collated by ``cache.collate``, no
    argument of the model's forward, so no column is removed), the evaluation batches the live data's, collated by
    ``self.live_collator``: what the model computes when it serves."""

    cache = None
    live_collator = None

    def _get_collator_with_removed_columns(self, data_collator, description=None):
        if self.cache is not None and data_collator == self.cache.collate:
            return data_collator
        return super()._get_collator_with_removed_columns(data_collator, description)

    def get_eval_dataloader(self, eval_dataset=None):
        training_collator, self.data_collator = self.data_collator, self.live_collator
        try:
            return super().get_eval_dataloader(eval_dataset)
        finally:
            self.data_collator = training_collator
