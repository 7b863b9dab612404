"""MDPD under torch's FSDP2 (``fully_shard``) on two CPU processes (gloo, a CPU device mesh), against one process.

One ``torchrun`` launch of ``tests/fsdp_run.py`` runs every case; each test reads its results. The 1-process
references run here, in the test process, from the same functions: same model, same global batch, same steps.
"""

import math
import sys
from pathlib import Path

import pytest
import torch
import transformers
from launching import launch

sys.path.insert(0, str(Path(__file__).parent))
import fsdp_run  # noqa: E402

ROOT = Path(__file__).parents[1]
SAME_AS_ONE_PROCESS = [name for name, (_, _, mp_policy) in fsdp_run.CASES.items() if mp_policy is None]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("fsdp")
    launch(ROOT / "tests" / "fsdp_run.py", [str(output_dir)], processes=2, timeout=480)
    ranks = [torch.load(output_dir / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    return {"ranks": ranks, "faded": torch.load(output_dir / "faded.pt"), "dir": output_dir}


_references: dict[str, tuple] = {}


def one_process(name: str):
    """The case's model trained on the whole global batch in this process: (losses, side network's logged values,
    faded state dict). Cases that differ only in layout share it."""
    config_kwargs = fsdp_run.CASES[name][0]
    key = repr(sorted(config_kwargs.items()))
    if key not in _references:
        model = fsdp_run.mdpd_model(**config_kwargs)
        losses = fsdp_run.train_on(model, fsdp_run.global_batch())
        logged = model.base_model.mdpd_side["default"].logged_values()
        _references[key] = losses, logged, model.merge_and_unload().state_dict()
    return _references[key]


def test_units_are_the_layout(runs):
    units = {name: set(result["units"]) for name, result in runs["ranks"][0].items() if name != "trainer_log"}
    layers = {f"base_model.model.bert.encoder.layer.{i}" for i in range(4)}
    assert units["ladder"] == {"", *layers, "base_model.model.bert.embeddings.word_embeddings"}  # fsdp.yaml's layout
    side = "base_model.mdpd_side.default"
    assert units["side-units"] == {"", *layers, side, *(f"{side}.blocks.{i}" for i in range(4))}
    assert side in units["size-based"] and f"{side}.head" not in units["size-based"]  # the head runs in the side's unit
    assert {"base_model", "base_model.mdpd_distill.default"} <= units["size-based"]


@pytest.mark.parametrize("name", SAME_AS_ONE_PROCESS)
def test_two_sharded_processes_train_as_one_process(runs, name):
    """Each rank trains on half of the global batch; the mean of the two ranks' loss terms is the 1-process term
    (equal halves, no padding), step by step: sharded forward and backward, reduced gradients, mask slices."""
    reference, _, _ = one_process(name)
    ranks = [rank[name]["losses"] for rank in runs["ranks"]]
    assert len(ranks[0]) == len(reference) == fsdp_run.STEPS
    for step, expected in enumerate(reference):
        assert set(ranks[0][step]) == set(expected) == {"loss", "task", "shallow", "deep", "logits", "backbone_task"}
        for term, value in expected.items():
            assert (ranks[0][step][term] + ranks[1][step][term]) / 2 == pytest.approx(value, rel=1e-5), (step, term)


@pytest.mark.parametrize("name", SAME_AS_ONE_PROCESS)
def test_fading_the_gathered_state_gives_the_one_process_model(runs, name):
    _, _, expected = one_process(name)
    faded = runs["faded"][name]
    assert faded.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(faded[key], expected[key], rtol=1e-4, atol=1e-5, msg=key)


@pytest.mark.parametrize("name", ["ladder", "sherl", "side-units"])
def test_logged_values_are_gathered_whole_on_every_rank(runs, name):
    """The ladder's gates are a sharded DTensor, SHERL's one-element skip gate leaves rank 1 an empty shard:
    every rank logs the whole, trained value."""
    _, expected, _ = one_process(name)
    logged = [rank[name]["logged"] for rank in runs["ranks"]]
    assert logged[0] == logged[1] and logged[0].keys() == expected.keys() and expected
    assert list(logged[0].values()) == pytest.approx(list(expected.values()), rel=1e-5)


@pytest.mark.parametrize("name", ["ladder-bf16", "side-units-bf16"])
def test_bf16_mixed_precision_trains_close_to_float32(runs, name):
    """``MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)``: the side network computes in bf16, inside the
    root unit or in a unit of its own (its states are cast in its own forward); the fp32 masters are what fades."""
    reference, _, expected = one_process(name)
    for step, expected_step in enumerate(reference):
        loss = sum(rank[name]["losses"][step]["loss"] for rank in runs["ranks"]) / 2
        assert math.isfinite(loss) and loss == pytest.approx(expected_step["loss"], rel=2e-2)
    faded = runs["faded"][name]
    for key in expected:
        assert faded[key].dtype == expected[key].dtype
        torch.testing.assert_close(faded[key], expected[key], rtol=0, atol=2e-2, msg=key)


def test_trainer_logs_evaluates_and_saves_a_model_sharded_by_hand(runs):
    history = runs["ranks"][0]["trainer_log"]
    assert [entry.keys() for entry in runs["ranks"][1]["trainer_log"]] == [entry.keys() for entry in history]  # every rank logs
    training = [entry for entry in history if "loss" in entry]
    assert len(training) == 2
    for entry in training:
        assert {"loss_task", "loss_shallow", "loss_deep", "loss_logits", "loss_backbone_task"} <= entry.keys()
        assert {f"gate_{i}" for i in range(4)} <= entry.keys()
    evaluation = next(entry for entry in history if "eval_faded_loss" in entry)
    assert math.isfinite(evaluation["eval_faded_loss"]) and math.isfinite(evaluation["eval_side_loss"])
    folder = runs["dir"] / "trainer" / "faded"
    assert (folder / "README.md").exists() and not (folder / "adapter_config.json").exists()
    faded = transformers.AutoModelForSequenceClassification.from_pretrained(folder)
    assert type(faded) is transformers.BertForSequenceClassification
