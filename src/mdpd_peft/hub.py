"""Shipping what MDPD trained: ``MDPDTrainer``'s faded model, saved with its model card and pushed to the Hub.

``PeftModel.push_to_hub`` (transformers' mixin) would push the adapter with a generic card; a trained MDPD model
ships as the plain transformers model fading returns (``gathered_faded_model``), with a card that says how it
was trained (``model_card``).
"""

from __future__ import annotations

import os

from huggingface_hub import HfApi

from .gathering import gathered_faded_model
from .model_card import METRIC_PATHS, faded_model_card
from .safe_saving import replaced_folder

SPEED_METRICS = ("_runtime", "_samples_per_second", "_steps_per_second")
# Adapter files that an earlier checkpoint push (``hub_strategy``) may have left in the repository: with them
# there, transformers would try to load the repository as a PEFT adapter instead of as the faded model.
ADAPTER_FILES = ["adapter_config.json", "adapter_model.safetensors", "adapter_model.bin"]


class ShipsFadedModel:
    """Mixin of ``MDPDTrainer``: ``save_faded_model``, ``faded_model_card`` and ``push_to_hub`` of the faded model. It
    reads the trainer's ``_mdpd_model()``, ``_peft_model()``, ``step_memory`` and last evaluation's metrics."""

    def save_faded_model(self, output_dir: str | None = None, **card_kwargs) -> str:
        """Fade a copy of the model and save it, the processor and a model card; training can go on.

        Writes ``config.json``, ``model.safetensors``, the tokenizer or image processor given to the
        Trainer, and ``README.md`` (see ``model_card``; ``card_kwargs``: ``datasets``, ``tags``,
        ``model_name``, ``base_model_note``: what a user must know about the base weights). Returns the folder (default ``<output_dir>/faded``). Every process must call it (the
        weights are gathered first: ``gathered_faded_model``); only the main process writes, and every process
        returns once the folder is complete. The folder is written beside and then moved into place: a fault
        while saving leaves the previous faded model as it was.
        """
        output_dir = output_dir or os.path.join(self.args.output_dir, "faded")
        faded = gathered_faded_model(self.deepspeed if self.is_deepspeed_enabled else self.model, self.accelerator)
        if faded is not None and self.args.should_save:  # the weights were gathered on the main process alone
            with replaced_folder(output_dir) as staging:
                faded.save_pretrained(staging)
                if self.processing_class is not None:
                    self.processing_class.save_pretrained(staging)
                self.faded_model_card(type(faded).__name__, **card_kwargs).save(os.path.join(staging, "README.md"))
        self.accelerator.wait_for_everyone()
        return output_dir

    def faded_model_card(self, model_class: str, datasets=None, tags=None, model_name=None, base_model_note=None):
        mdpd = self._mdpd_model()
        trainable, total = self._peft_model().get_nb_trainable_parameters()
        prefixes = tuple(f"{self._last_eval_prefix}_{name}_" for name in METRIC_PATHS)
        metrics = {
            k: v for k, v in self.last_eval_metrics.items() if k.startswith(prefixes) and not k.endswith(SPEED_METRICS)
        }
        metric_names = [k.removeprefix(prefixes[0]) for k in metrics if k.startswith(prefixes[0])]
        return faded_model_card(
            mdpd.peft_config[mdpd.active_adapters[0]],
            model_class,
            metrics,
            [name for name in metric_names if name != "loss"],
            trainable,
            total,
            self.step_memory.peak_bytes,
            self.step_memory.device,
            datasets=[datasets] if isinstance(datasets, str) else datasets,
            extra_tags=[tags] if isinstance(tags, str) else tags,
            model_name=model_name,
            base_model_note=base_model_note,
        )

    def push_to_hub(
        self,
        commit_message: str | None = "End of training",
        blocking: bool = True,
        token: str | None = None,
        revision: str | None = None,
        private: bool | None = None,
        **card_kwargs,
    ):
        """Push the faded model (``save_faded_model``) to ``args.hub_model_id``, with its model card.

        The repository then holds a plain transformers model; adapter files an earlier checkpoint push
        left there are deleted in the same commit. ``card_kwargs`` go to the model card.
        """
        token = token if token is not None else self.args.hub_token
        if self.hub_model_id is None:
            self.init_hf_repo(token=token, private=private)
        folder = self.save_faded_model(os.path.join(self.args.output_dir, "faded"), **card_kwargs)
        if not self.is_world_process_zero():
            return None
        self._finish_current_push()
        return HfApi(library_name="mdpd-peft").upload_folder(
            repo_id=self.hub_model_id,
            folder_path=folder,
            commit_message=commit_message,
            token=token,
            run_as_future=not blocking,
            revision=revision if revision is not None else self.args.hub_revision,
            delete_patterns=ADAPTER_FILES,
        )
