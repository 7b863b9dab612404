"""MDPD for image classification: a ViT-family model from a local path or Hub id, faded back to itself.

The same flow as the main job (``text_classification.py``): linear probe, MDPD with ``MDPDTrainer``, test
metrics of both paths, fading to ``<output-dir>/faded`` with the image processor and a model card, reload
with plain transformers, summary; ``--push-to-hub`` pushes the faded folder.

No pretrained ViT can be downloaded here, so nothing is run by default on real pretrained weights: pass
``--model`` (e.g. ``google/vit-base-patch16-224-in21k`` when online, or any local folder with a ViT-family
model and its image processor). The offline default data is scikit-learn's digits; ``--dataset`` also
takes an image folder (one sub-folder per class) or a Hub dataset name.

    python examples/image_classification.py --model path/to/vit
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the defaults are all local; --push-to-hub turns this off

import mdpd_job  # noqa: E402
from example_data import DIGITS, label_arguments, load_image_classification  # noqa: E402
from transformers import (  # noqa: E402
    AutoConfig,
    AutoImageProcessor,
    AutoModelForImageClassification,
    DefaultDataCollator,
)

from mdpd_peft import MDPDConfig  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="local path or Hub id of a ViT-family model with its image processor")
    parser.add_argument("--dataset", default=DIGITS, help="'digits' (scikit-learn), an image folder, or a Hub dataset name")
    parser.add_argument("--image-column", default="image")
    parser.add_argument("--label-column", default="label")
    mdpd_job.add_training_arguments(parser, learning_rate=3e-3, output_dir="outputs/image_classification")
    return parser.parse_args(argv)


def main(argv=None) -> dict[str, float]:
    args = parse_args(argv)
    mdpd_job.prepare(args)

    processor = AutoImageProcessor.from_pretrained(args.model)
    data = load_image_classification(args.dataset, args.image_column, args.label_column)
    labels = label_arguments(data)
    mode = "RGB" if AutoConfig.from_pretrained(args.model).num_channels == 3 else "L"

    def to_pixels(rows):  # applied lazily, batch by batch
        pixels = processor([image.convert(mode) for image in rows["image"]], return_tensors="pt")["pixel_values"]
        return {"pixel_values": pixels, "labels": rows["label"]}

    def load_model():
        return AutoModelForImageClassification.from_pretrained(
            args.model,
            **labels,
            ignore_mismatched_sizes=True,  # a pretrained head for another label set is replaced
        )

    return mdpd_job.run(
        args,
        load_model=load_model,
        # PEFT calls image models directly (task_type=None); the head is trained and saved as a whole.
        peft_config=MDPDConfig(modules_to_save=["classifier"], reduction_factor=args.reduction_factor, mask_ratio=args.mask_ratio),
        data=data.with_transform(to_pixels),
        collator=DefaultDataCollator(),
        processing_class=processor,
        title=args.model,
        dataset_name=DIGITS if args.dataset == DIGITS else os.path.basename(args.dataset.rstrip("/")),
    )


if __name__ == "__main__":
    main()
