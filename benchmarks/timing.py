"""Wall-clock timing shared by the speed suites: interleaved rounds, so that drift on a shared machine hits every
timed function alike, and the median of each."""

from __future__ import annotations

import statistics
import time

import torch
from tqdm.auto import tqdm


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(function, device: torch.device) -> float:
    """Seconds of one call of ``function``, the device's queued work included."""
    synchronize(device)
    start = time.perf_counter()
    function()
    synchronize(device)
    return time.perf_counter() - start


def interleaved_medians(functions: dict, rounds: int, device: torch.device, warmup: int = 2) -> dict[str, float]:
    """Median time of each function over ``rounds`` rounds after ``warmup`` untimed ones, running them round-robin so
    drift on a shared machine hits all alike."""
    times = {name: [] for name in functions}
    for round_index in tqdm(range(warmup + rounds), desc="timing", leave=False):
        for name, function in functions.items():
            elapsed = timed(function, device)
            if round_index >= warmup:
                times[name].append(elapsed)
    return {name: statistics.median(values) for name, values in times.items()}
