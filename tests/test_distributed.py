"""MDPD under data parallelism: two CPU processes (gloo) started by torchrun, against one process.

The runs are real: torchrun starts the processes, the Trainer and accelerate wrap the model in DDP.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers

ROOT = Path(__file__).parents[1]


def launch(script: Path, args: list[str], processes: int) -> None:
    """Runs ``script`` on ``processes`` CPU processes (torchrun) or on one (plain python)."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    command = [*(launcher if processes > 1 else [sys.executable]), str(script), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]


@pytest.fixture(scope="module")
def trainer_runs(tmp_path_factory):
    """The same 6 optimizer steps of MDPDTrainer: 2 processes x batch 4, and 1 process x batch 8."""
    runs = {}
    for processes, batch in ((2, 4), (1, 8)):
        output_dir = tmp_path_factory.mktemp(f"trainer{processes}")
        launch(ROOT / "tests" / "ddp_trainer_run.py", [str(output_dir), "--batch-size", str(batch)], processes)
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


def test_accelerate_loop_on_two_processes_reproduces_one_process_and_fades_on_the_main_one(tmp_path, minilm_path):
    # A tiny random BERT without dropout, MiniLM's tokenizer, sentences of one token length: as above, two
    # processes at batch 4 must then reproduce one process at batch 8.
    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_path)
    config = transformers.BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    torch.manual_seed(0)
    transformers.BertForSequenceClassification(config).save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    words = {"good": ["wonderful", "moving", "brilliant", "great"], "bad": ["dull", "clumsy", "awful", "boring"]}
    rows = [f"a {words[verdict][i % 4]} film,{verdict}" for i in range(80) for verdict in ["good" if i % 3 else "bad"]]
    (tmp_path / "reviews.csv").write_text("\n".join(["review,verdict", *rows]))
    common = ["--model", str(tmp_path / "model"), "--dataset", str(tmp_path / "reviews.csv"), "--text-column", "review",
              "--label-column", "verdict", "--epochs", "1", "--cpu"]  # fmt: skip
    runs = {}
    for processes, batch in ((2, 4), (1, 8)):
        runs[processes] = tmp_path / f"out{processes}"
        launch(ROOT / "examples" / "accelerate_loop.py", [*common, "--batch-size", str(batch), "--output-dir", str(runs[processes])], processes)
    losses = {processes: json.loads((run / "losses.json").read_text()) for processes, run in runs.items()}
    assert len(losses[2]) == len(losses[1]) == 8  # 64 training rows / global batch 8
    assert set(losses[2][0]) == {"loss", "task", "shallow", "deep", "logits", "backbone_task"}
    for one, two in zip(losses[1], losses[2]):
        assert two == pytest.approx(one, rel=1e-4)
    files = {path.name for path in (runs[2] / "faded").iterdir()}
    assert {"config.json", "model.safetensors"} <= files and not any(name.startswith("adapter_") for name in files)
