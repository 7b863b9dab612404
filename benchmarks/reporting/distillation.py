"""Knowledge distillation into the faded model's trainables (``teacher_distillation.py``): can a trained teacher
teach LayerNorm tuning more than the labels do?"""

from __future__ import annotations

from .common import Results

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
