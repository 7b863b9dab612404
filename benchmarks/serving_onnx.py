"""Serving N tasks on ONNX Runtime: the side-task bundle exported as one graph against N merged models exported alike.

    python benchmarks/serving_onnx.py --model minilm                     # the real all-MiniLM-L6-v2, batch 32 x 64 tokens
    python benchmarks/serving_onnx.py --model tiny --tasks 1 2 --repeats 1   # the CI smoke version (seconds)

The protocol is ``serving.py``'s (same models, same batch with half its rows padded, same side tasks and merged LoRA
models), with each model also exported to ONNX and run on ONNX Runtime (CPUExecutionProvider, as many intra-op
threads as PyTorch uses, default graph optimisations). For each N in ``--tasks``, four ways serve the batch to N
tasks, interleaved round by round (warm-up first, then the median of ``--repeats`` rounds):

- **torch_bundle**: the ``SideTaskModel`` with N tasks under ``torch.inference_mode`` (one encoder pass);
- **ort_bundle**: its ``export_onnx`` graph, all N outputs;
- **torch_merged**: N LoRA-fine-tuned models, each merged into its own copy of the model, one after another;
- **ort_merged**: those N models, each exported by the same ``torch.onnx.export`` call as the bundle
  (``onnx_export.export_graph``; optimum's exporter does not install beside transformers 5, see ``OPTIMUM``).

Also recorded: ``ort_bundle_one_output``, the bundle's graph asked for one task's output (``InferenceSession.run``'s
``output_names``: does ONNX Runtime skip the other tasks' nodes?), the largest difference between each PyTorch
model's logits and its graph's, the export times and the graph files' bytes. Weights are random except MiniLM's:
time does not depend on their values. Results go to ``--output`` (JSON).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from result_files import RESULTS, write_result  # noqa: E402
from serving import argument_parser, batch_for, encoder_and_classifier_class, environment, merged_models, side_settings, side_tasks  # noqa: E402
from timing import interleaved_medians  # noqa: E402

from mdpd_peft import export_onnx  # noqa: E402
from mdpd_peft.side_tasks.onnx_export import ONNX_FILE, encoder_input_names, example_inputs, export_graph, input_axes  # noqa: E402

OPTIMUM = (
    "optimum-onnx 0.1.0 (the newest on PyPI) requires transformers<4.58 and optimum~=2.1; installed beside "
    "transformers 5.25 without its dependencies, its exporter fails to import (transformers.modeling_utils has no "
    "get_parameter_dtype any more). The merged models are exported with the bundle's torch.onnx.export settings instead."
)


class Logits(nn.Module):
    """A ``*ForSequenceClassification`` / ``*ForImageClassification`` model as a graph: the encoder's inputs -> logits."""

    def __init__(self, model: nn.Module, input_names: list[str]):
        super().__init__()
        self.model = model
        self.input_names = input_names

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.input_names, inputs))).logits


def session(path: Path, threads: int) -> onnxruntime.InferenceSession:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def feeds_for(inputs: dict[str, torch.Tensor], input_names: list[str]) -> dict[str, np.ndarray]:
    """The batch as the graph takes it; token types the batch lacks are zeros, as the PyTorch models use."""
    return {name: (inputs[name] if name in inputs else torch.zeros_like(inputs["input_ids"])).numpy() for name in input_names}


def largest_difference(torch_logits: list[torch.Tensor], ort_logits: list[np.ndarray]) -> float:
    return max(float(np.abs(o - t.numpy()).max()) for t, o in zip(torch_logits, ort_logits))


def export_merged(models: list[nn.Module], input_names: list[str], folder: Path, encoder) -> tuple[list[Path], float]:
    """Each merged model to ``folder/merged-<i>.onnx``; returns the paths and the seconds of one export."""
    paths, seconds = [], []
    for i, model in enumerate(models):
        path = folder / f"merged-{i}.onnx"
        start = time.perf_counter()
        export_graph(Logits(model, input_names), example_inputs(encoder, input_names), str(path), input_names, ["logits"], input_axes(input_names) | {"logits": {0: "batch"}}, None)
        seconds.append(time.perf_counter() - start)
        paths.append(path)
    return paths, statistics.median(seconds)


def measure_tasks(encoder, merged: list[nn.Module], merged_sessions: list, inputs: dict, n: int, repeats: int, threads: int, folder: Path, settings: dict) -> dict:
    """One N: the bundle exported, then the four ways (and one output of the bundle's graph) timed interleaved."""
    bundle = side_tasks(encoder, n, **settings)
    start = time.perf_counter()
    export_onnx(bundle, folder / f"bundle-{n}")
    export_seconds = time.perf_counter() - start
    bundle_path = folder / f"bundle-{n}" / ONNX_FILE
    bundle_session = session(bundle_path, threads)
    input_names = [node.name for node in bundle_session.get_inputs()]
    feeds = feeds_for(inputs, input_names)
    first_output = bundle_session.get_outputs()[0].name
    merged, merged_sessions = merged[:n], merged_sessions[:n]
    ways = {
        "torch_bundle": lambda: bundle(**inputs),
        "ort_bundle": lambda: bundle_session.run(None, feeds),
        "ort_bundle_one_output": lambda: bundle_session.run([first_output], feeds),
        "torch_merged": lambda: [model(**inputs) for model in merged],
        "ort_merged": lambda: [merged_session.run(None, feeds) for merged_session in merged_sessions],
    }
    with torch.inference_mode():
        median = interleaved_medians(ways, repeats, torch.device("cpu"), warmup=1)
        bundle_logits = list(bundle(**inputs).task_logits.values())
        merged_logits = [model(**inputs).logits for model in merged]
    return {
        "tasks": n,
        "seconds": median,
        "ort_vs_torch_bundle": median["torch_bundle"] / median["ort_bundle"],
        "ort_vs_torch_merged": median["torch_merged"] / median["ort_merged"],
        "bundle_vs_merged_torch": median["torch_merged"] / median["torch_bundle"],
        "bundle_vs_merged_ort": median["ort_merged"] / median["ort_bundle"],
        "one_output_vs_all": median["ort_bundle_one_output"] / median["ort_bundle"],
        "largest_logit_difference": {
            "bundle": largest_difference(bundle_logits, bundle_session.run(None, feeds)),
            "merged": largest_difference(merged_logits, [s.run(None, feeds)[0] for s in merged_sessions]),
        },
        "export_seconds_bundle": export_seconds,
        "graph_bytes": {"bundle": bundle_path.stat().st_size, "merged": sum((folder / f"merged-{i}.onnx").stat().st_size for i in range(n))},
    }


def measure(name: str, tasks: list[int], batch: int, length: int, repeats: int, settings: dict) -> dict:
    encoder, make_model = encoder_and_classifier_class(name)
    encoder.eval()
    inputs = batch_for(encoder, batch, length)
    threads = torch.get_num_threads()
    input_names = encoder_input_names(encoder)
    rows = []
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        merged = merged_models(make_model, max(tasks))  # the first N of them serve N tasks
        paths, merged_export_seconds = export_merged(merged, input_names, folder, encoder)
        merged_sessions = [session(path, threads) for path in paths]
        for n in tasks:
            row = measure_tasks(encoder, merged, merged_sessions, inputs, n, repeats, threads, folder, settings)
            row["export_seconds_one_merged"] = merged_export_seconds
            rows.append(row)
            print(
                f"N={n:>2}: ONNX Runtime {row['ort_vs_torch_bundle']:.2f}x PyTorch's speed for the bundle, {row['ort_vs_torch_merged']:.2f}x for the "
                f"merged models; bundle {row['bundle_vs_merged_torch']:.2f}x the merged models' speed on PyTorch, {row['bundle_vs_merged_ort']:.2f}x on "
                f"ONNX Runtime; one output {row['one_output_vs_all']:.2f}x the time of all",
                flush=True,
            )
    return {"model": name, "batch": batch, "length": length, "repeats": repeats, "settings": settings, "threads": threads, "optimum": OPTIMUM, "rows": rows}


def main(argv=None) -> dict:
    args = argument_parser(__doc__, [1, 4, 8, 16]).parse_args(argv)
    result = measure(args.model, args.tasks, args.batch, args.length, args.repeats, side_settings(args))
    result["environment"] = environment() | {
        "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__, "onnxruntime_intra_op_threads": result["threads"], "cpu_count": os.cpu_count(),
    }
    write_result(result, args.output or RESULTS / f"serving-onnx-{args.model}-cpu.json")
    return result


if __name__ == "__main__":
    main()
