"""Fading from a teacher that is ahead: a trained kept side task's logits as the teacher of MDPD's fade phase.

    python benchmarks/fade_from_teacher.py --task trec --seeds 0 --logits-weights 0 1e-4 1e-2 0.1 1   # the weight grid
    python benchmarks/fade_from_teacher.py --task trec --seeds 1 2 --logits-weights 0 1e-2              # its best, more seeds

Per seed:

1. the teacher: a kept side task (``--teacher``, an ``accuracy.py`` ``SIDE_TASKS`` entry; default the ladder at r = 8
   with the backbone's heads, the kept side network with the best whole-split Rotten Tomatoes accuracy) trains on the
   training split's state cache for ``--teacher-epochs`` at its best rate in the task's kept side network grid
   (``RATE_GRIDS``), evaluated on caches of the validation and test splits; its logits on every training example are
   then computed once, from the cache (``SideTaskTrainer.predict``), and saved for later runs of the same teacher;
2. the students: MDPD's faded trainables (``methods.METHODS["mdpd"]``: a copy of every LayerNorm and the head,
   ``fading="checkpointed"``) trained by ``MDPDTrainer(teacher_logits=...)``, the fade phase alone: the task loss on the
   backbone's logits plus Eq. 3 (the squared error to the teacher's logits, summed over classes, mean over the
   batch) weighted by each of ``--logits-weights`` (the paper's is 1e-4; 0 is the same fade with no teacher), for
   ``--epochs`` at LayerNorm tuning's best rate in the task's methods grid (the same trainables). A student reports
   the test accuracy of its epoch with the best validation accuracy, as ``accuracy.py``'s runs do.

The weight is chosen as a learning rate is: a grid on seed 0, then more seeds at its best validation weight.
One JSON line per student in ``--output``, each with its teacher's accuracy (validation, test, and on the training
examples it teaches: how much it knows beyond the labels) and training minutes.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch
from accuracy import TASKS, best_epoch, grid_best_rates, protocol_trainer, train_side_task
from datasets import DatasetDict
from example_data import ROTTEN_TOMATOES, TREC
from methods import METHODS, trainable_parameters
from result_files import append_row
from transformers import set_seed
from transformers.utils import logging as hf_logging

from mdpd_peft import MDPDTrainer

RESULTS = Path(__file__).parent / "results"
TEACHERS = Path("/tmp/mdpd-teacher/logits")  # each teacher's logits on the training split, saved by ``teacher``
# Per task: the kept side networks' grid (the teacher's rate) and the methods' grid (LayerNorm tuning's rate).
RATE_GRIDS = {
    ROTTEN_TOMATOES: (RESULTS / "side-task-grid-minilm.jsonl", RESULTS / "lr-grid-minilm.jsonl"),
    TREC: (RESULTS / "side-task-grid-trec-minilm.jsonl", RESULTS / "lr-grid-trec-minilm.jsonl"),
}


def teacher(method: str, learning_rate: float, seed: int, task, epochs: int, folds: int) -> tuple[torch.Tensor, dict]:
    """``train_teacher``'s logits and row fields, saved in ``TEACHERS`` and read from there by a later run of the same
    teacher (a grid over weights on one seed, then more seeds: the teacher trains once per seed)."""
    folded = f"-{folds}-folds" if folds > 1 else ""
    path = TEACHERS / f"{task.name}-{len(task.data['train'])}-{method}-{learning_rate:g}-{epochs}-{seed}{folded}.pt"
    if path.exists():
        saved = torch.load(path)
        return saved["logits"], saved["row"]
    logits, row = train_teacher(method, learning_rate, seed, task, epochs, folds)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"logits": logits, "row": row}, path)
    return logits, row


def fold_parts(size: int, folds: int, seed: int) -> list[tuple[list[int], list[int]]]:
    """(trained on, taught) example indices per teacher: every example both for one teacher; for ``folds`` > 1 a seeded
    split into ``folds`` parts, each taught by a teacher trained on the others."""
    if folds == 1:
        return [(list(range(size)), list(range(size)))]
    order = torch.randperm(size, generator=torch.Generator().manual_seed(seed)).tolist()
    held_out = [sorted(order[fold::folds]) for fold in range(folds)]
    return [(sorted(set(range(size)) - set(taught)), taught) for taught in held_out]


def train_teacher(method: str, learning_rate: float, seed: int, task, epochs: int, folds: int = 1) -> tuple[torch.Tensor, dict]:
    """The teacher's logits on every training example (n, C), and its row fields. ``folds`` > 1: out-of-fold logits,
    each example's from a teacher that never saw its label (trained on the cache of the other folds, predicting its
    fold through the encoder); the teacher's validation and test accuracy are then the fold teachers' mean."""
    train = task.data["train"]
    logits, results, minutes = torch.zeros(len(train), task.labels["num_labels"]), [], 0.0
    for fold, (trained_on, taught) in enumerate(fold_parts(len(train), folds, seed)):
        fold_task = task if folds == 1 else replace(task, data=DatasetDict({**task.data, "train": train.select(trained_on)}))
        trainer, clock, cache, _ = train_side_task(method, learning_rate, seed, fold_task, f"/tmp/mdpd-teacher/{method}-{seed}", epochs, cached_eval=True)
        logits[taught] = torch.as_tensor(trainer.predict(cache if folds == 1 else train.select(taught)).predictions)
        results.append(best_epoch(trainer.state.log_history, method))
        minutes += sum(clock.seconds) / 60
        if folds > 1:
            shutil.rmtree(cache.folder)  # the other folds' states: used once
    labels = torch.as_tensor(train["labels"])
    return logits, {
        "teacher": method,
        "teacher_rate": learning_rate,
        "teacher_epochs": epochs,
        **({"teacher_folds": folds} if folds > 1 else {}),
        "teacher_validation": statistics.mean(result["validation"] for result in results),
        "teacher_test": statistics.mean(result["test"] for result in results),
        "teacher_train_accuracy": float((logits.argmax(-1) == labels).float().mean()),  # of the logits that teach
        "teacher_train_minutes": minutes,
    }


def train_student(logits_weight: float, teacher_logits: torch.Tensor, learning_rate: float, seed: int, task, epochs: int) -> dict:
    set_seed(seed)
    model = METHODS["mdpd"](task.classifier_model(), logits_loss_weight=logits_weight)
    trainer, clock = protocol_trainer(MDPDTrainer, model, task.data, task.collator, f"/tmp/mdpd-student/{seed}", learning_rate, seed,
                                      epochs=epochs, metric=task.metric, teacher_logits=teacher_logits)  # fmt: skip
    trainer.train()
    result = best_epoch(trainer.state.log_history, "mdpd")
    return {
        "method": "mdpd_from_teacher" if logits_weight else "mdpd_from_teacher_weight_0",
        "logits_loss_weight": logits_weight,
        "learning_rate": learning_rate,
        "epochs": epochs,
        "trainable_parameters": trainable_parameters(model) - sum(p.numel() for p in trainer._mdpd_model().side_parameters()),  # the faded ones
        **result,
        "train_minutes_to_epoch": sum(clock.seconds[: round(result["epoch"])]) / 60,
    }


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=list(RATE_GRIDS), default=ROTTEN_TOMATOES)
    parser.add_argument("--teacher", default="side_task_r8_lst", help="an accuracy.py SIDE_TASKS entry")
    parser.add_argument("--teacher-epochs", type=int, default=5, help="the kept side networks' epochs in accuracy.py's runs")
    parser.add_argument("--teacher-folds", type=int, default=1, help="> 1: out-of-fold teacher logits, each example's from a teacher "
                        "trained on the other folds (default 1: one teacher, trained on every example it teaches)")  # fmt: skip
    parser.add_argument("--epochs", type=int, default=2, help="the students' (the protocol's)")
    parser.add_argument("--logits-weights", nargs="+", type=float, default=[0.0, 1e-4, 1e-2, 1.0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--train-size", type=int, default=None, help="smoke runs only")
    parser.add_argument("--eval-size", type=int, default=None, help="smoke runs only")
    parser.add_argument("--output", default=None, help="default: results/fade-from-teacher-<task>-minilm.jsonl")
    args = parser.parse_args(argv)
    if args.teacher_folds < 1:
        parser.error(f"--teacher-folds must be 1 or more; got {args.teacher_folds}")
    hf_logging.set_verbosity_error()
    task = TASKS[args.task](args.task, args)
    teacher_grid, student_grid = RATE_GRIDS[args.task]
    teacher_rate, student_rate = grid_best_rates(teacher_grid, [args.teacher])[args.teacher], grid_best_rates(student_grid, ["layernorm"])["layernorm"]
    output = Path(args.output or RESULTS / f"fade-from-teacher-{args.task}-minilm.jsonl")
    rows = []
    for seed in args.seeds:
        logits, teacher_row = teacher(args.teacher, teacher_rate, seed, task, args.teacher_epochs, args.teacher_folds)
        for weight in args.logits_weights:
            started = time.perf_counter()
            student = train_student(weight, logits, student_rate, seed, task, args.epochs)
            row = {**student, "task": task.name, "seed": seed, "train_size": len(task.data["train"]), **teacher_row,
                   "minutes": (time.perf_counter() - started) / 60}  # fmt: skip
            append_row(output, row)
            rows.append(row)
    return rows


if __name__ == "__main__":
    main()
