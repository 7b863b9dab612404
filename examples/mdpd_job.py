"""The part of the example jobs that does not depend on the modality: probe, train, test, fade, reload, push, summary.

``text_classification.py`` and ``image_classification.py`` load their model and data, then call ``run``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable

import torch
from datasets import DatasetDict
from linear_probe import linear_probe
from peft import get_peft_model
from transformers import Trainer, TrainingArguments, set_seed
from transformers.utils import logging as hf_logging

from mdpd_peft import MDPDConfig, MDPDTrainer


def add_training_arguments(parser: argparse.ArgumentParser, learning_rate: float, output_dir: str, epochs: float = 2.0) -> None:
    parser.add_argument("--train-size", type=int, default=None, help="use only the first N training rows")
    parser.add_argument("--epochs", type=float, default=epochs)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=learning_rate)
    parser.add_argument("--reduction-factor", "-r", type=int, default=8, help="side width = hidden size / r")
    parser.add_argument("--mask-ratio", type=float, default=0.5, help="lambda, the masked share of side tokens")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", default=output_dir)
    parser.add_argument("--push-to-hub", metavar="REPO", default=None, help="push the faded model to this Hub repository")


def prepare(args: argparse.Namespace) -> None:
    """What every job does first: go online only to push, quiet the new head's notice (the Trainer's progress
    bars, which that would also turn off, are turned on again in ``run``), seed everything."""
    if args.push_to_hub:
        os.environ["HF_HUB_OFFLINE"] = "0"
    hf_logging.set_verbosity_error()  # the new classifier's "newly initialized" notice is expected
    set_seed(args.seed)


def accuracy(prediction) -> dict[str, float]:
    """Computed directly: the Hub-hosted ``evaluate`` metric scripts cannot be downloaded offline."""
    return {"accuracy": float((prediction.predictions.argmax(-1) == prediction.label_ids).mean())}


def run(
    args: argparse.Namespace,
    load_model: Callable[[], torch.nn.Module],
    peft_config: MDPDConfig,
    data: DatasetDict,
    collator,
    processing_class,
    title: str,
    dataset_name: str,
    base_model_note: str | None = None,
    group_by_length: bool = False,
) -> dict[str, float]:
    """Probe, MDPD training, test of both paths, fading, reload with plain transformers; prints and returns the summary.

    ``base_model_note`` goes into the faded model's card (what a user must know about the base weights).
    ``group_by_length`` batches sentences of similar length together (transformers' ``LengthGroupedSampler``), so
    that a batch is padded to little more than its own sentences: for text, where a random batch is about half padding.

    ``data`` has ``train`` / ``validation`` / ``test`` splits already encoded for the model, with ``labels``.
    ``args.output_dir`` ends up holding ``faded/`` only: the job cannot be resumed, so it keeps no checkpoints.
    """
    started = time.perf_counter()
    if args.train_size is not None:
        data["train"] = data["train"].select(range(min(args.train_size, len(data["train"]))))
    probe = linear_probe(load_model(), data, collator, seed=args.seed)

    peft_model = get_peft_model(load_model(), peft_config)
    training_args = TrainingArguments(
        args.output_dir,
        num_train_epochs=args.epochs,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=64,
        learning_rate=args.learning_rate,
        warmup_steps=0.1,
        train_sampling_strategy="group_by_length" if group_by_length else "random",
        eval_strategy="epoch",
        save_strategy="no",  # nothing resumes from a checkpoint: the faded model is the job's output
        logging_steps=50,
        report_to=[],
        disable_tqdm=False,  # on by default only while transformers logs warnings, which prepare() quiets
        seed=args.seed,
        hub_model_id=args.push_to_hub,
        dataloader_pin_memory=torch.cuda.is_available(),
        remove_unused_columns=False,  # the callers pass exactly the model's inputs (images through a lazy transform)
    )
    trainer = MDPDTrainer(
        model=peft_model,
        args=training_args,
        train_dataset=data["train"],
        eval_dataset=data["validation"],
        data_collator=collator,
        processing_class=processing_class,
        compute_metrics=accuracy,
    )
    trainer.train()
    test = trainer.evaluate(data["test"], metric_key_prefix="test")

    faded_dir = trainer.save_faded_model(os.path.join(args.output_dir, "faded"), datasets=[dataset_name], base_model_note=base_model_note)
    reloaded = type(peft_model.get_base_model()).from_pretrained(faded_dir)  # the plain transformers class
    with tempfile.TemporaryDirectory() as scratch:  # predict() writes nothing, but the Trainer wants a folder
        reload_args = TrainingArguments(
            scratch,
            per_device_eval_batch_size=64,
            report_to=[],
            disable_tqdm=False,
            remove_unused_columns=False,
            dataloader_pin_memory=torch.cuda.is_available(),
        )
        reloaded_test = Trainer(model=reloaded, args=reload_args, data_collator=collator, compute_metrics=accuracy)
        reloaded_accuracy = reloaded_test.predict(data["test"], metric_key_prefix="test").metrics["test_accuracy"]
    if args.push_to_hub:
        trainer.push_to_hub(datasets=[dataset_name], base_model_note=base_model_note)

    trainable, total = peft_model.get_nb_trainable_parameters()
    summary = {
        "linear probe (frozen encoder), test accuracy": probe["test"],
        "side network, test accuracy": test["test_side_accuracy"],
        "faded model, test accuracy": test["test_faded_accuracy"],
        "faded model reloaded with plain transformers, test accuracy": reloaded_accuracy,
        "trainable parameters": trainable,
        "peak training memory, MiB (first step, weights excluded)": trainer.step_memory.peak_bytes / 2**20,
        "wall time, minutes (probe + training + evaluation)": (time.perf_counter() - started) / 60,
    }
    print(f"\nMDPD on {title}, {dataset_name}: {len(data['train'])} train / {len(data['test'])} test rows")
    print(f"({total:,} parameters, device {training_args.device}, {torch.get_num_threads()} CPU threads)")
    print(f"Output: {faded_dir}, the faded model (a plain transformers model, its processor and model card); no checkpoints are kept.")
    for name, value in summary.items():
        print(f"  {name:<62} {value:>10,.3f}" if isinstance(value, float) else f"  {name:<62} {value:>10,}")
    return summary
