"""A short MDPDTrainer run that the distributed tests start with ``torchrun`` (or plain ``python`` for one process).

    torchrun --standalone --nproc_per_node 2 tests/ddp_trainer_run.py OUT --batch-size 4
    python tests/ddp_trainer_run.py OUT --batch-size 8

Trains the conftest's tiny random BERT (dropout off, so runs differ only by their masks) on fixed random
token batches, then each rank writes ``OUT/rank<r>.pt``: its trainable weights after training and the
masked-generation masks it drew; rank 0 also writes ``OUT/log_history.json`` and the faded model, ``OUT/faded``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from datasets import Dataset
from peft import get_peft_model
from transformers import TrainingArguments, default_data_collator

sys.path.insert(0, str(Path(__file__).parent))
from conftest import VOCAB, tiny_text_model  # noqa: E402
from launching import exit_without_teardown  # noqa: E402

from mdpd_peft import MDPDConfig, MDPDTrainer, distillation  # noqa: E402


def recording_masks(masks: list[torch.Tensor]):
    sample = distillation.sample_token_mask

    def record(real, mask_ratio):
        mask = sample(real, mask_ratio)
        masks.append(mask.clone())
        return mask

    return record


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("output_dir")
    parser.add_argument("--batch-size", type=int, required=True, help="per process")
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()

    generator = torch.Generator().manual_seed(0)
    rows = 64
    data = Dataset.from_dict(
        {"input_ids": torch.randint(5, VOCAB, (rows, 12), generator=generator).tolist(),
         "attention_mask": torch.ones(rows, 12, dtype=torch.long).tolist(),
         "labels": torch.randint(0, 3, (rows,), generator=generator).tolist()}
    )  # fmt: skip
    base = tiny_text_model()
    for module in base.modules():  # no dropout: two runs of the same data differ only by their masks
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    model = get_peft_model(base, MDPDConfig(task_type="SEQ_CLS", reduction_factor=4))
    masks: list[torch.Tensor] = []
    distillation.sample_token_mask = recording_masks(masks)

    training_args = TrainingArguments(
        args.output_dir,
        per_device_train_batch_size=args.batch_size,
        max_steps=args.steps,
        learning_rate=3e-3,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=0,
        use_cpu=True,
        dataloader_pin_memory=False,
    )
    trainer = MDPDTrainer(model=model, args=training_args, train_dataset=data, data_collator=default_data_collator)
    trainer.train()
    trainer.save_faded_model(str(Path(args.output_dir) / "faded"))  # every rank calls it, the main one writes

    rank = trainer.args.process_index
    output_dir = Path(args.output_dir)
    trainables = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    torch.save({"trainables": trainables, "masks": masks, "world_size": trainer.args.world_size}, output_dir / f"rank{rank}.pt")
    if rank == 0:
        (output_dir / "log_history.json").write_text(json.dumps(trainer.state.log_history))
    # No process may exit while another still talks to it: one that leaves its gloo group to the interpreter's
    # teardown while a peer's last collective is in flight aborts (SIGABRT). Meet, then close the group.
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()


if __name__ == "__main__":
    main()
    exit_without_teardown()
