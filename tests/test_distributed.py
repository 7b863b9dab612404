"""MDPD under data parallelism: two CPU processes (gloo) started by torchrun, against one process.

The runs are real: torchrun starts the processes, the Trainer and accelerate wrap the model in DDP.
"""

import json
import math
from pathlib import Path

import pytest
import torch
import transformers
from launching import launch
from safetensors.torch import load_file

ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def trainer_runs(tmp_path_factory):
    """The same 6 optimizer steps of MDPDTrainer: 2 processes x batch 4, and 1 process x batch 8."""
    runs = {}
    for processes, batch in ((2, 4), (1, 8)):
        output_dir = tmp_path_factory.mktemp(f"trainer{processes}")
        launch(ROOT / "tests" / "ddp_trainer_run.py", [str(output_dir), "--batch-size", str(batch)], processes, timeout=900)
        runs[processes] = output_dir
    return runs


def test_ranks_keep_identical_trainables(trainer_runs):
    ranks = [torch.load(trainer_runs[2] / f"rank{r}.pt") for r in (0, 1)]
    assert ranks[0]["world_size"] == 2
    names = ranks[0]["trainables"].keys()
    assert any("mdpd_side" in n for n in names) and any("mdpd_copies" in n for n in names) and any("mdpd_distill" in n for n in names)
    for name in names:
        assert torch.equal(ranks[0]["trainables"][name], ranks[1]["trainables"][name]), name


def test_each_rank_draws_its_own_masks(trainer_runs):
    masks = [torch.load(trainer_runs[2] / f"rank{r}.pt")["masks"] for r in (0, 1)]
    assert len(masks[0]) == len(masks[1]) == 6
    assert all(m.any() for m in masks[0])
    assert not any(torch.equal(a, b) for a, b in zip(*masks))


def test_two_processes_reproduce_the_one_process_run_at_the_same_global_batch(trainer_runs):
    """Same data order, same weights, no dropout; and the ranks' mask slices together are exactly the
    masks one process draws for the whole batch. So the curves agree to float rounding, every term."""
    logs = {}
    for processes, output_dir in trainer_runs.items():
        history = json.loads((output_dir / "log_history.json").read_text())
        logs[processes] = [entry for entry in history if "loss" in entry]
    assert len(logs[1]) == len(logs[2]) == 6
    terms = [key for key in logs[1][0] if key.startswith("loss")]
    assert set(terms) == {"loss", "loss_task", "loss_shallow", "loss_deep", "loss_logits", "loss_backbone_task"}
    for one, two in zip(logs[1], logs[2]):
        assert [two[t] for t in terms] == pytest.approx([one[t] for t in terms], rel=1e-5)


def assert_same_faded_weights(one: Path, two: Path) -> None:
    """The faded folders of a 1- and a 2-process run at the same global batch hold the same tensors, to float rounding."""
    weights = [load_file(folder / "model.safetensors") for folder in (one, two)]
    assert weights[0].keys() == weights[1].keys()
    for name in weights[0]:
        torch.testing.assert_close(weights[1][name], weights[0][name], rtol=1e-4, atol=1e-5, msg=name)


def test_two_processes_fade_to_the_one_process_model(trainer_runs):
    assert not (trainer_runs[2] / "faded" / "adapter_config.json").exists()
    assert_same_faded_weights(trainer_runs[1] / "faded", trainer_runs[2] / "faded")


@pytest.fixture(scope="module")
def loop_job(tmp_path_factory, minilm_path):
    """Runs examples/accelerate_loop.py on a tiny random BERT without dropout (MiniLM's tokenizer) and
    sentences of one token length, so runs at the same global batch must agree to float rounding."""
    root = tmp_path_factory.mktemp("loop")
    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_path)
    config = transformers.BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    torch.manual_seed(0)
    transformers.BertForSequenceClassification(config).save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    words = {"good": ["wonderful", "moving", "brilliant", "great"], "bad": ["dull", "clumsy", "awful", "boring"]}
    rows = [f"a {words[verdict][i % 4]} film,{verdict}" for i in range(80) for verdict in ["good" if i % 3 else "bad"]]
    (root / "reviews.csv").write_text("\n".join(["review,verdict", *rows]))
    common = ["--model", str(root / "model"), "--dataset", str(root / "reviews.csv"), "--text-column", "review",
              "--label-column", "verdict", "--epochs", "1", "--cpu"]  # fmt: skip

    runs: dict[tuple, Path] = {}  # a run that several tests compare against is made once

    def run(processes: int, *args: str) -> Path:
        """The output dir of the job on ``processes`` processes with ``args``: losses.json and faded/."""
        key = (processes, *args)
        if key not in runs:
            runs[key] = root / f"run{len(runs)}"
            launch(ROOT / "examples" / "accelerate_loop.py", [*common, *args, "--output-dir", str(runs[key])], processes, timeout=900)
        return runs[key]

    return run


def losses(output_dir: Path) -> list[dict]:
    return json.loads((output_dir / "losses.json").read_text())


def test_accelerate_loop_on_two_processes_reproduces_one_process_and_fades_on_the_main_one(loop_job):
    one, two = losses(loop_job(1, "--batch-size", "8")), losses(loop_job(2, "--batch-size", "4"))
    assert len(one) == len(two) == 8  # 64 training rows / global batch 8
    assert set(two[0]) == {"loss", "task", "shallow", "deep", "logits", "backbone_task"}
    for step_one, step_two in zip(one, two):
        assert step_two == pytest.approx(step_one, rel=1e-4)
    files = {path.name for path in (loop_job(2, "--batch-size", "4") / "faded").iterdir()}
    assert {"config.json", "model.safetensors"} <= files and not any(name.startswith("adapter_") for name in files)
    assert_same_faded_weights(loop_job(1, "--batch-size", "8") / "faded", loop_job(2, "--batch-size", "4") / "faded")


def test_gradient_accumulation_reproduces_the_whole_batch(loop_job):
    whole = losses(loop_job(1, "--batch-size", "8"))
    accumulated = losses(loop_job(1, "--batch-size", "4", "--gradient-accumulation-steps", "2"))
    assert len(accumulated) == len(whole) == 8
    for step_whole, step_accumulated in zip(whole, accumulated):
        assert step_accumulated == pytest.approx(step_whole, rel=1e-4)


def test_bf16_autocast_on_two_cpu_processes_trains_without_nans(loop_job):
    steps = losses(loop_job(2, "--batch-size", "4", "--mixed-precision", "bf16"))
    assert len(steps) == 8 and all(math.isfinite(value) for step in steps for value in step.values())


@pytest.mark.parametrize(
    "name, distributed_type", [("multi_gpu", "MULTI_GPU"), ("fsdp", "FSDP"), ("deepspeed_zero2", "DEEPSPEED"), ("deepspeed_zero3", "DEEPSPEED")]
)
def test_example_accelerate_configs_are_read_by_accelerate(name, distributed_type):
    """The configs of examples/accelerate_configs/ load as accelerate's own config class (running them needs GPUs)."""
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(ROOT / "examples" / "accelerate_configs" / f"{name}.yaml"))
    assert config.distributed_type == distributed_type and config.num_processes == 2 and not config.use_cpu
