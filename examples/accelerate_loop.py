"""MDPD in a plain 🤗 accelerate training loop: the same script runs on one process or several.

    python examples/accelerate_loop.py                                          # one process
    torchrun --standalone --nproc_per_node 2 examples/accelerate_loop.py        # two data-parallel GPU processes
    torchrun --standalone --nproc_per_node 2 examples/accelerate_loop.py --cpu  # two CPU processes (gloo)
    accelerate launch --config_file examples/accelerate_configs/fsdp.yaml examples/accelerate_loop.py  # GPUs; untested, see README

Trains all-MiniLM-L6-v2 (or ``--model``) with MDPD on Rotten Tomatoes (or ``--dataset``), tests the
faded path, then gathers the weights, fades them on the main process and saves the plain transformers
model to ``<output-dir>/faded``. ``--batch-size`` is per process: the global batch is that times the number of
processes (times ``--gradient-accumulation-steps``). ``<output-dir>/losses.json`` holds, per optimizer
step, every loss term averaged over the processes.

accelerate does the distributed work: ``prepare`` wraps the model in DDP and shards the batches,
``backward`` and ``accumulate`` handle mixed precision and gradient accumulation. MDPD needs nothing
more: its side network and distillation modules are ordinary trainable submodules of the PEFT model,
and each process draws its own masked-generation masks (``mdpd_peft.distillation.sample_token_mask``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from accelerate import Accelerator  # noqa: E402
from accelerate.utils import set_seed  # noqa: E402
from example_data import add_text_arguments, encode_text_classification, load_text_classification, text_model_path  # noqa: E402
from peft import get_peft_model  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    get_linear_schedule_with_warmup,
)
from transformers.utils import logging as hf_logging  # noqa: E402

from mdpd_peft import MDPDConfig, gathered_faded_model  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_text_arguments(parser)
    parser.add_argument("--train-size", type=int, default=None, help="use only the first N training rows")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32, help="per process")
    parser.add_argument("--gradient-accumulation-steps", type=int, default=1)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], default=None, help="default: accelerate's config")
    parser.add_argument("--cpu", action="store_true", help="train on CPU processes even if a GPU is present (needed for multi-process CPU runs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", default="outputs/accelerate_loop")
    return parser.parse_args(argv)


@torch.no_grad()
def test_accuracy(model, loader, accelerator: Accelerator) -> float:
    """Accuracy of the model's eval path over the whole split, every process's share gathered."""
    model.eval()
    correct, seen = 0, 0
    for batch in loader:
        predictions, labels = accelerator.gather_for_metrics((model(**batch).logits.argmax(-1), batch["labels"]))
        correct += (predictions == labels).sum().item()
        seen += labels.numel()
    return correct / seen


def main(argv=None) -> dict:
    args = parse_args(argv)
    accelerator = Accelerator(
        cpu=args.cpu, gradient_accumulation_steps=args.gradient_accumulation_steps, mixed_precision=args.mixed_precision
    )
    launched = int(os.environ.get("WORLD_SIZE", 1))
    if accelerator.num_processes != launched:  # accelerate only forms a CPU process group when asked to
        raise SystemExit(f"{launched} processes were launched but accelerate set up {accelerator.num_processes}: pass --cpu for CPU processes.")
    set_seed(args.seed)  # the same on every process: the model starts identical everywhere
    hf_logging.set_verbosity_error()  # the new classifier's "newly initialized" notice is expected

    # Data: every process tokenizes the same splits; the prepared loaders give each its share of a batch.
    model_path = text_model_path(args.model)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    data = load_text_classification(args.dataset, args.text_column, args.label_column)
    if args.train_size is not None:
        data["train"] = data["train"].select(range(min(args.train_size, len(data["train"]))))
    num_labels = len(set(data["train"]["label"]))
    with accelerator.main_process_first():
        encoded = encode_text_classification(data, tokenizer, args.max_length)
    collator = DataCollatorWithPadding(tokenizer)
    order = torch.Generator().manual_seed(args.seed)  # the same global batches for any number of processes
    train_loader = DataLoader(encoded["train"], batch_size=args.batch_size, shuffle=True, generator=order, collate_fn=collator)
    test_loader = DataLoader(encoded["test"], batch_size=64, collate_fn=collator)

    # Model, optimizer, schedule: what a single-process loop would build.
    base = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=num_labels)
    model = get_peft_model(base, MDPDConfig(task_type="SEQ_CLS"))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.learning_rate)
    steps = args.epochs * -(-len(train_loader) // (accelerator.num_processes * args.gradient_accumulation_steps))
    # accelerate's prepared scheduler advances once per process at every optimizer step: lay it out in those units.
    ticks = accelerator.num_processes
    scheduler = get_linear_schedule_with_warmup(optimizer, num_warmup_steps=steps // 10 * ticks, num_training_steps=steps * ticks)
    model, optimizer, train_loader, test_loader, scheduler = accelerator.prepare(model, optimizer, train_loader, test_loader, scheduler)
    # The loss terms come from the tuner: DDP with find_unused_parameters=True rebuilds `output` without them.
    tuner = accelerator.unwrap_model(model).base_model

    # Training: one optimizer step per `gradient_accumulation_steps` batches on every process.
    losses, pending = [], {}
    progress = tqdm(total=steps, desc="training", disable=not accelerator.is_main_process)
    for epoch in range(args.epochs):
        model.train()
        for batch in train_loader:
            with accelerator.accumulate(model):
                output = model(**batch)
                accelerator.backward(output.loss)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            terms = {"loss": output.loss.detach(), **tuner.latest_losses}
            means = accelerator.reduce(torch.stack(list(terms.values())), reduction="mean").tolist()  # one all-reduce
            for name, value in zip(terms, means):  # mean over processes, then over the accumulated batches
                pending.setdefault(name, []).append(value)
            if accelerator.sync_gradients:
                losses.append({name: sum(values) / len(values) for name, values in pending.items()})
                pending = {}
                progress.update()
                progress.set_postfix(loss=f"{losses[-1]['loss']:.4g}", epoch=epoch)
    progress.close()

    # Test the faded path (the backbone: what ships), then fade on the main process and save.
    faded_accuracy = test_accuracy(model, test_loader, accelerator)
    faded = gathered_faded_model(model, accelerator)  # every process takes part: FSDP and ZeRO-3 gather their shards
    output_dir = Path(args.output_dir)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "losses.json").write_text(json.dumps(losses))
        faded.save_pretrained(output_dir / "faded")
        tokenizer.save_pretrained(output_dir / "faded")
        accelerator.print(f"{accelerator.num_processes} process(es), {steps} steps: faded test accuracy {faded_accuracy:.3f}")
        accelerator.print(f"faded model ({type(faded).__name__}) saved in {output_dir / 'faded'}")
    # Every process waits for the others, then closes its process group: a process that exits while a peer's last
    # collective is still in flight, its gloo group left to the interpreter's teardown, dies with SIGABRT.
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return {"faded_test_accuracy": faded_accuracy, "losses": losses}


if __name__ == "__main__":
    main()
    # Everything is written and the process group closed: leave without the interpreter's teardown, in which a
    # torchrun worker was seen to hang now and then (finalizers and library threads, timing-dependent).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
