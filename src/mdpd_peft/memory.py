"""Deterministic peak training memory: bytes of tensors allocated during a stretch of work, weights excluded."""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class LiveTensorBytes(TorchDispatchMode):
    """Counts the storages every ATen op allocates while the mode is on, until they are freed; keeps the peak.

    What existed before the mode started (weights, frozen buffers) is not counted, so inside one optimizer
    step the peak covers activations, anything recomputed in backward, gradients and new optimizer state.
    Unlike process RSS it is exact and repeatable: the same step always gives the same number. A storage is
    counted once however many views share it; frees are seen through a finaliser on the storage object,
    which PyTorch keeps alive exactly as long as the storage itself.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live_bytes = 0
        self.peak_bytes = 0
        self._live: dict[int, int] = {}  # id(storage) -> nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        output = func(*args, **(kwargs or {}))
        # Views and in-place results share an input's storage: nothing new was allocated for them.
        inputs = {id(t.untyped_storage()) for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for leaf in tree_leaves(output):
            if isinstance(leaf, torch.Tensor) and leaf.device.type != "meta":
                storage = leaf.untyped_storage()
                if id(storage) not in inputs:
                    self._track(storage)
        return output

    def _track(self, storage: torch.UntypedStorage) -> None:
        key = id(storage)
        if key in self._live:
            return
        self._live[key] = storage.nbytes()
        self.live_bytes += storage.nbytes()
        self.peak_bytes = max(self.peak_bytes, self.live_bytes)
        weakref.finalize(storage, self._free, key)

    def _free(self, key: int) -> None:
        self.live_bytes -= self._live.pop(key, 0)


class PeakMemory:
    """Peak tensor bytes allocated between ``start()`` and ``stop()`` above what was live at ``start()``.

    CUDA: ``torch.cuda.max_memory_allocated`` (the standard figure). CPU: ``LiveTensorBytes``.
    """

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.peak_bytes: int | None = None
        self._mode: LiveTensorBytes | None = None
        self._baseline = 0

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._baseline = torch.cuda.memory_allocated(self.device)
        else:
            self._mode = LiveTensorBytes()
            self._mode.__enter__()

    def stop(self) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device) - self._baseline
        else:
            self._mode.__exit__(None, None, None)
            self.peak_bytes, self._mode = self._mode.peak_bytes, None
        return self.peak_bytes

    def __enter__(self) -> PeakMemory:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
