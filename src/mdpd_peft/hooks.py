"""The live MDPD pass: the tuner's forward hooks that run the side network and the losses beside the model's forward.

A pre-hook on the wrapped model opens a ``ForwardCapture`` for the pass (targets, attention mask, stored side logits)
and the ``BackboneCapture`` that records the backbone's states; a hook after each encoder layer lets the fading
policy act on its output (``fading="block_local"``); a hook after the model runs the side pass on the recorded
states (``forward_pass``), adds the backbone's terms and writes the combined loss into the model's output. Hooks on
the base model's modules work under every PEFT task wrapper, ``task_type=None`` included (PeftModel then calls the
base model directly and never the tuner's forward).
"""

from __future__ import annotations

import inspect
import math
import warnings

import torch
from transformers.utils import ModelOutput

from .batch_checks import BatchLimits, call_arguments, check_batch
from .capture import BackboneCapture
from .config import MDPDConfig
from .fading import FadingPolicy, uses_reentrant_checkpointing
from .forward_pass import SIDE_LOGITS_ARGUMENT, TARGET_ARGUMENTS, ForwardCapture, backbone_logits_of, stored_side_pass, with_backbone_terms, write_logits
from .layer import MDPDLayer


class LivePassHooks:
    """Mixin of ``MDPDModel``: the hooks of the live pass. It reads the tuner's adapters (``peft_config``,
    ``mdpd_side``, ``mdpd_fading``, ``active_adapters``) and its ``_side_pass``, and keeps per pass ``_capture``, and
    across passes ``latest_losses``, ``latest_skipped`` and ``_training_passes`` (which ``fading_interval`` counts)."""

    def _register_hooks(self) -> None:
        if self._hook_handles:
            return
        self._forward_signature = inspect.signature(self.model.forward)
        self._batch_limits = BatchLimits.of(self.model)
        encoder = next(iter(self.mdpd_encoders.values()))
        self._backbone_capture = BackboneCapture(self.model, encoder)  # records the states the side network reads
        # Bound methods, not closures: copy.deepcopy of the model rebinds them to the copy. The layer hooks run after
        # the capture's (registered later), so layer call i's output is recorded when they see it.
        self._hook_handles = [
            self.model.register_forward_pre_hook(self._begin_forward, with_kwargs=True),
            *(layer.register_forward_hook(self._after_layer) for layer in encoder.layers(self.model)),
            self.model.register_forward_hook(self._finish_forward, with_kwargs=True),
        ]

    def _remove_hooks(self) -> None:
        for handle in self._hook_handles:
            handle.remove()
        self._hook_handles = []
        self._backbone_capture.remove()

    def _fading(self) -> FadingPolicy | None:
        """The active adapter's fading policy (None without an active MDPD adapter)."""
        return self.mdpd_fading.get(self.active_adapters[0]) if self.active_adapters else None

    def _side_path_needed(self) -> bool:
        if not self._adapters_enabled or not self.active_adapters or self.active_adapters[0] not in self.mdpd_side:
            return False
        return self.model.training or self.peft_config[self.active_adapters[0]].eval_path == "side"

    def _begin_forward(self, module, args, kwargs):
        """Open the pass's capture; a batch's stored side logits (``mdpd_side_logits``, the fade phase's) are taken
        out of the model's arguments here, so the transformers model never sees them."""
        self._capture = None
        self.latest_losses = {}
        self.latest_skipped = False
        stored_side_logits = kwargs.pop(SIDE_LOGITS_ARGUMENT, None)
        arguments = call_arguments(self._forward_signature, args, kwargs)
        check_batch(arguments, self._batch_limits, self.model.config)
        targets = {name: arguments[name] for name in TARGET_ARGUMENTS if arguments.get(name) is not None}
        if self.model.training and not targets and self._side_path_needed() and self.mdpd_side[self.active_adapters[0]].head is not None:
            raise ValueError(
                "An MDPD training forward needs the task's targets: pass labels= (start_positions= and end_positions= for "
                "question answering), or call model.eval() to predict. Without them only the distillation terms would "
                "train, silently (a dataset without a label column does this under the Trainer)."
            )
        fading = self._fading()
        if fading is not None and self.model.training:
            fading.before_training_forward(self)
        if getattr(self.model, "_require_grads_hook", None) is not None and not uses_reentrant_checkpointing(self.model):
            # PeftModel hooks the input embeddings to require grad when the model checkpoints (so do transformers
            # and the Trainer's gradient_checkpointing=True). Only reentrant checkpointing needs that; with it, every
            # backward would cross the whole backbone even when only the last layers' norms train (fading_layers),
            # and every forward of an adapter loaded for inference would record the backbone for a backward.
            self.model.disable_input_require_grads()
        learns = True
        if self.model.training and self._side_path_needed():
            learns = fading.norm_copies_learn(self._training_passes)
            self._training_passes += 1
        self._let_norm_copies_learn(learns)
        if not self._side_path_needed():
            return args, kwargs
        if not self.model.training:
            stored_side_logits = None  # eval_path="side" runs the side network itself
        elif stored_side_logits is not None:
            fading.check_stored_side_logits()
        self._capture = ForwardCapture(attention_mask=arguments.get("attention_mask"), targets=targets, stored_side_logits=stored_side_logits)
        if self._capture.records_states:
            self._backbone_capture.open(self._capture.attention_mask, self.mdpd_side[self.active_adapters[0]].rerun_layers)
        return args, kwargs

    def _let_norm_copies_learn(self, learns: bool) -> None:
        """Held-still copies (``fading_interval``) give a backbone pass that autograd does not record."""
        for module in self.model.modules():
            if isinstance(module, MDPDLayer):
                module.learns = learns

    def _after_layer(self, module, args, output):
        """After each encoder layer call of a pass that records states: the fading policy's turn (``after_layer``)."""
        if self._capture is None or self._backbone_capture.current is None:
            return None
        return self._fading().after_layer(self, output)

    def _finish_forward(self, module, args, kwargs, output):
        capture, self._capture = self._capture, None
        recorded = self._backbone_capture.close()
        if capture is None or (capture.records_states and (recorded is None or recorded.embeddings is None)):
            return output
        if not isinstance(output, ModelOutput):
            raise ValueError("MDPD needs the model to return a ModelOutput; call it with return_dict=True.")
        config: MDPDConfig = self.peft_config[self.active_adapters[0]]
        backbone_logits = backbone_logits_of(output)
        if not capture.records_states:  # the fade phase: Eq. 3 against the side network's stored logits
            real = None  # Eq. 3 reads it for token-level logits only
            side = stored_side_pass(capture.stored_side_logits, backbone_logits)
        else:
            states = self._backbone_capture.states(recorded)
            real = states.real
            per_token = backbone_logits is not None and backbone_logits.dim() == 3
            logits_dtype = backbone_logits.dtype if backbone_logits is not None else None
            side = self._side_pass(states, capture.targets, per_token, logits_dtype, distil=self.model.training)

        if not self.model.training:  # eval_path == "side": the side network predicts
            if side.logits is not None:
                write_logits(output, side.logits)
            if "task" in side.losses:
                output["loss"] = side.losses["task"]
            return output

        losses, total = with_backbone_terms(side, config, backbone_logits, output.get("loss"), real)
        losses.update(self._fading().logged_terms(capture.local_losses))  # learnt outside the total (block_local)
        if not self._loss_is_finite({**losses, "total": total}):  # before backward() or an optimizer can use it
            total = total.detach() + sum(p.sum() for p in self.parameters() if p.requires_grad) * 0.0  # zero gradients
        output["loss"] = total
        output.mdpd_losses = losses
        output.mdpd_skipped = self.latest_skipped
        self.latest_losses = {name: value.detach() for name, value in losses.items()}
        return output

    def _loss_is_finite(self, terms: dict[str, torch.Tensor]) -> bool:
        """Whether every term is finite; if not, raise or warn naming them (``MDPDConfig.nonfinite_loss``)."""
        values = torch.stack([value.detach().float() for value in terms.values()])
        if torch.isfinite(values).all():
            return True
        bad = ", ".join(f"{name}={value:g}" for name, value in zip(terms, values.tolist()) if not math.isfinite(value))
        message = (
            f"MDPD loss term(s) {bad} at training forward pass {self._training_passes}: a NaN or inf input, weight or "
            "loss weight upstream of them (check the batch and the model's weights)."
        )
        if self.peft_config[self.active_adapters[0]].nonfinite_loss == "raise":
            raise FloatingPointError(f"{message} Nothing was written to the weights. MDPDConfig(nonfinite_loss='skip') skips such steps instead.")
        warnings.warn(f"{message} Skipping this step (MDPDConfig.nonfinite_loss='skip').", RuntimeWarning, stacklevel=2)
        self.latest_skipped = True
        return False
