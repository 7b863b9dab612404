"""Capturing one backbone pass for side networks: the embeddings, every layer's output and the calls to re-run.

A side network only reads the frozen encoder's states, so one backbone pass can feed any number of them.
``BackboneCapture`` holds forward hooks on the encoder's layers that record, while a capture is open, what
side networks read: the input of the first layer (the embeddings), each layer call's output in call order
(ALBERT runs one module several times) and, for the layers a side network re-runs on its own states (SHERL's
late module, DTL's blocks from M on), the arguments of that call. Everything is detached: no side path
backpropagates into the backbone through these states.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .architecture import EncoderMap
from .forward_pass import as_loaded, layer_input, layer_output, real_tokens, with_layer_input
from .side_networks import BackboneStates


@dataclass
class CapturedPass:
    """What one backbone pass left for the side networks (tensors detached)."""

    attention_mask: torch.Tensor | None
    embeddings: torch.Tensor | None = None  # (B, N, D_0): the input of layer 0
    layer_outputs: list[torch.Tensor] = field(default_factory=list)  # in call order: layer call i's output is item i
    layer_calls: dict[int, tuple[tuple, dict]] = field(default_factory=dict)  # (args, kwargs) of the calls to re-run


class BackboneCapture:
    """Forward hooks on ``encoder``'s layers of ``model`` that record a ``CapturedPass`` while one is open.

    Hooks are bound methods, not closures: ``copy.deepcopy`` of the model rebinds them to the copy's capture.
    """

    def __init__(self, model: nn.Module, encoder: EncoderMap):
        self.model = model
        self.encoder = encoder
        self.current: CapturedPass | None = None
        self.rerun_layers: frozenset[int] = frozenset()
        layers = encoder.layers(model)
        self._handles = [
            layers[0].register_forward_pre_hook(self._record_embeddings, with_kwargs=True),
            *(layer.register_forward_pre_hook(self._record_call, with_kwargs=True) for layer in layers),
            *(layer.register_forward_hook(self._record_output) for layer in layers),
        ]

    def open(self, attention_mask: torch.Tensor | None, rerun_layers: frozenset[int] = frozenset()) -> None:
        """Record the next pass; keep the call arguments of the layers in ``rerun_layers``."""
        self.current = CapturedPass(attention_mask=attention_mask)
        self.rerun_layers = rerun_layers

    def close(self) -> CapturedPass | None:
        """The recorded pass (None if no capture was open), and stop recording."""
        captured, self.current = self.current, None
        return captured

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _record_embeddings(self, module, args, kwargs):
        if self.current is not None and self.current.embeddings is None:
            self.current.embeddings = layer_input(args, kwargs).detach()

    def _record_call(self, module, args, kwargs):
        if self.current is not None and len(self.current.layer_outputs) in self.rerun_layers:
            self.current.layer_calls[len(self.current.layer_outputs)] = (args, kwargs)

    def _record_output(self, module, args, output):
        if self.current is not None:
            self.current.layer_outputs.append(layer_output(output).detach())

    def states(self, captured: CapturedPass) -> BackboneStates:
        """``BackboneStates`` of a recorded pass, with ``rerun`` calling the recorded layers as loaded."""
        embeddings = captured.embeddings
        real = real_tokens(captured.attention_mask, *embeddings.shape[:2], embeddings.device)

        def rerun(index: int, hidden: torch.Tensor) -> torch.Tensor:
            layer = self.encoder.layer_module(self.model, index)
            args, kwargs = with_layer_input(*captured.layer_calls[index], hidden.to(embeddings.dtype))
            with as_loaded(layer):
                return layer_output(layer(*args, **kwargs))

        return BackboneStates(embeddings, captured.layer_outputs, real, rerun)
