"""Knowledge distillation into the faded model's trainables (``teacher_distillation.py``): can a trained teacher
teach LayerNorm tuning more than the labels do?"""

from __future__ import annotations

import statistics
from collections import defaultdict

from .common import Results, mean_std, name
from .side_tasks import baseline_runs

DISTILLATION = "teacher_distillation-minilm.jsonl"
TEACHERS = {
    "side_kept": "ladder side network",
    "side_wide": "ladder side network, 4x wide",
    "side_distilled": "ladder side network with feature distillation",
    "lora": "LoRA r=8",
}
STUDENTS = {"layernorm": "LayerNorm tuning", "bitfit_layernorm": "BitFit + LayerNorm tuning"}


def distillation_lines(results: Results) -> list[str]:
    """Every teacher -> student run, in the file's order (alpha 0: the student without a teacher, same process)."""
    rows = results.rows(DISTILLATION)
    if not rows:
        return []
    sizes = ", ".join(f"{size:,}" for size in sorted({row["train_size"] for row in rows}))
    lines = [
        f"### Distilling a trained teacher into LayerNorm tuning: all-MiniLM-L6-v2, {sizes} Rotten Tomatoes training sentences", "",
        f"`python benchmarks/teacher_distillation.py` (`results/{DISTILLATION}`): the teacher trains first, then the student "
        "trains on (1 − alpha) x the task loss + alpha x T² x KL(teacher ‖ student) at temperature T, the teacher's logits "
        "computed once (alpha 0: the student alone, same rate, same process). One seed per row; the teacher's accuracy after "
        "its last epoch, the student's at its best validation epoch.", "",
        "| teacher | epochs | teacher validation / test | student | rate | alpha | T | validation | test |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|",
    ]  # fmt: skip
    for row in rows:
        teacher = TEACHERS.get(row["teacher"], row["teacher"]) if row["alpha"] else "— (no teacher)"
        teacher_accuracy = f"{row['teacher_validation']:.3f} / {row['teacher_test']:.3f}" if row["alpha"] else "—"
        epochs = row["teacher_epochs"] if row["alpha"] else "—"
        temperature = f"{row['temperature']:g}" if row["alpha"] else "—"
        lines.append(
            f"| {teacher} | {epochs} | {teacher_accuracy} | {STUDENTS.get(row['student'], row['student'])} | {row['student_rate']:g} "
            f"| {row['alpha']:g} | {temperature} | {row['validation']:.3f} | {row['test']:.3f} |"
        )
    return [*lines, ""]


FADE_FROM_TEACHER = {"rotten_tomatoes": "Rotten Tomatoes", "trec": "TREC"}  # task -> title; file fade-from-teacher-<task>-minilm.jsonl


def fade_from_teacher_lines(results: Results) -> list[str]:
    """MDPD's fade phase taught by a trained kept side task (``fade_from_teacher.py``), per task, teacher (in-sample or
    out-of-fold logits) and Eq. 3 weight, beside LayerNorm tuning at its best rate, with the share of the teacher's lead
    over LayerNorm tuning that each student keeps (on the seeds the student ran)."""
    tables = []
    for task, title in FADE_FROM_TEACHER.items():
        rows = results.rows(f"fade-from-teacher-{task}-minilm.jsonl")
        if not rows:
            continue
        layernorm = {r["seed"]: r for r in baseline_runs(results, task, rows[0]["train_size"]).get("layernorm", [])}
        if layernorm:
            runs = list(layernorm.values())
            tables.append(f"| {title} | LayerNorm tuning (best rate) | {len(runs)} | {mean_std([r['validation'] for r in runs])} | {mean_std([r['test'] for r in runs])} | — |")
        by_teacher = defaultdict(lambda: defaultdict(list))
        for row in rows:
            by_teacher[row.get("teacher_folds", 1)][row["logits_loss_weight"]].append(row)
        for folds, by_weight in sorted(by_teacher.items()):
            teachers = {r["seed"]: r for runs in by_weight.values() for r in runs}
            logits = "in-sample logits" if folds == 1 else f"out-of-fold logits, {folds} folds"
            for weight, runs in sorted(by_weight.items()):
                label = "0 (no teacher)" if weight == 0.0 else f"{weight:g}"
                tables.append(f"| {title} | MDPD fade, Eq. 3 weight {label}{'' if folds == 1 else f' ({logits})'} | {len(runs)} | "
                              f"{mean_std([r['validation'] for r in runs])} | {mean_std([r['test'] for r in runs])} | {lead_kept(runs, teachers, layernorm)} |")  # fmt: skip
            first = next(iter(teachers.values()))
            tables.append(f"| {title} | teacher: {name(first['teacher'])}, {first['teacher_epochs']} epochs at {first['teacher_rate']:g}, {logits} ("
                          f"{statistics.mean(r['teacher_train_accuracy'] for r in teachers.values()):.3f} accurate on the examples it teaches) | {len(teachers)} | "
                          f"{mean_std([r['teacher_validation'] for r in teachers.values()])} | {mean_std([r['teacher_test'] for r in teachers.values()])} | — |")  # fmt: skip
    if not tables:
        return []
    return [
        "### Fading from a teacher that is ahead: a kept side task teaching MDPD's fade phase", "",
        "`python benchmarks/fade_from_teacher.py` (`results/fade-from-teacher-<task>-minilm.jsonl`): per seed, a kept side task trains on the "
        "state cache, its logits on the training examples are computed once, and MDPD's fade phase (`MDPDTrainer(teacher_logits=...)`: "
        "the LayerNorm copies and the head, the task loss plus Eq. 3 at the weight given; 0 is the same fade with no teacher) "
        "trains 2 epochs at LayerNorm tuning's best grid rate. The weight is chosen as a rate is: a grid on seed 0, more seeds at "
        "its best validation weight. Out-of-fold logits: each example's from a teacher trained on the other folds (the teacher's "
        "accuracies are the fold teachers' mean). Whole training splits; mean ± std over seeds; test at the best validation "
        "epoch. *Lead kept*: (student − LayerNorm tuning) / (teacher − LayerNorm tuning), mean test accuracy on the student's seeds.", "",
        "| task | model | seeds | validation | test | lead kept |",
        "|---|---|---:|---:|---:|---:|",
        *tables, "",
    ]  # fmt: skip


def lead_kept(runs: list[dict], teachers: dict[int, dict], layernorm: dict[int, dict]) -> str:
    """(student − LayerNorm tuning) / (teacher − LayerNorm tuning) on the mean test accuracy of the students' seeds."""
    compared = [r for r in runs if r["seed"] in layernorm]
    if not compared:
        return "—"
    baseline = statistics.mean(layernorm[r["seed"]]["test"] for r in compared)
    lead = statistics.mean(teachers[r["seed"]]["teacher_test"] for r in compared) - baseline
    student = statistics.mean(r["test"] for r in compared)
    if lead <= 0:
        return f"— (teacher {lead * 100:+.1f} pt)"
    return f"{(student - baseline) / lead:+.2f} of {lead * 100:+.1f} pt"
