"""The backbone-state cache: exact round trip, stale keys refused, cached training equal to live training,
interrupted builds never read and resumed, MDPDTrainer's side phase on the cache followed by a fade phase, and
the side network's outputs stored beside the states for that fade phase."""

import numpy as np
import pytest
import torch
from datasets import Dataset
from peft import get_peft_model
from transformers import AutoTokenizer, TrainerCallback, TrainingArguments

from conftest import VOCAB, tiny_mdpd_model, tiny_text_model, without_dropout
from mdpd_peft import MDPDConfig, MDPDTrainer, StaleStateCacheError, StateCache, build_state_cache
from mdpd_peft import phases
from mdpd_peft.state_cache import tokenizer_hash


def ragged_dataset(rows: int = 13, length: int = 12, seed: int = 0) -> Dataset:
    """Rows of 3..length real tokens, right-padded to ``length``, with class labels."""
    generator = np.random.RandomState(seed)
    lengths = generator.randint(3, length + 1, rows)
    lengths[0] = length
    ids = generator.randint(5, VOCAB, (rows, length))
    mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.int64)
    return Dataset.from_dict({"input_ids": (ids * mask).tolist(), "attention_mask": mask.tolist(), "labels": generator.randint(0, 3, rows).tolist()})


def live_states(model, data: Dataset) -> list[torch.Tensor]:
    """Each example's (n, S, D) states from one eval-mode pass over the whole dataset, real tokens only."""
    model.eval()
    mask = torch.tensor(data["attention_mask"])
    with torch.no_grad():
        hidden = model.base_model.model(input_ids=torch.tensor(data["input_ids"]), attention_mask=mask, output_hidden_states=True).hidden_states
    stacked = torch.stack(hidden, dim=2)  # (B, N, L + 1, D)
    return [row[real.bool()] for row, real in zip(stacked, mask)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_cache_round_trips_the_backbone_states_exactly(tmp_path, dtype):
    model, data = tiny_mdpd_model(), ragged_dataset()
    cache = build_state_cache(model, data, tmp_path, dtype=dtype, batch_size=len(data), examples_per_shard=5)
    assert len(cache) == len(data) and len(cache.shard_names) == 3
    assert cache.hidden_state_indices == (0, 1, 2, 3, 4)  # the ladder reads the embeddings and every layer
    for index, expected in enumerate(live_states(model, data)):
        example = cache[index]
        assert example["hidden_states"].dtype == dtype
        torch.testing.assert_close(example["hidden_states"], expected.to(dtype), rtol=0, atol=0)  # no padding stored
        assert int(example["labels"]) == data[index]["labels"]
    batch = cache.collate([cache[i] for i in (1, 2, 3)])  # re-padded to the batch's longest
    lengths = [sum(data[i]["attention_mask"]) for i in (1, 2, 3)]
    assert batch["hidden_states"].shape == (3, max(lengths), 5, 64)
    assert batch["attention_mask"].sum(1).tolist() == lengths
    assert not batch["hidden_states"][~batch["attention_mask"].bool()].any()
    # fewer layers, fewer bytes: MDPDConfig.side_layers decides what is stored
    fewer = build_state_cache(tiny_mdpd_model(side_layers=[1, 3]), data, tmp_path / "fewer", dtype=dtype)
    assert fewer.hidden_state_indices == (0, 2, 4)
    assert fewer[0]["hidden_states"].shape == (12, 3, 64)


def test_text_rows_run_in_batches_of_similar_length_and_are_stored_in_the_datasets_order(tmp_path, minilm_path):
    """Each shard's rows run shortest first, so a batch pads to little more than its own rows; every example is
    still stored at its own index, equal to its row run alone, with its own label."""
    padded = ragged_dataset(rows=13)
    rows = [
        {"input_ids": row["input_ids"][:length], "attention_mask": [1] * length, "labels": row["labels"]}
        for row in padded
        for length in [sum(row["attention_mask"])]
    ]
    model, widths = tiny_mdpd_model(), []
    handle = model.base_model.model.register_forward_pre_hook(lambda module, args, kwargs: widths.append(kwargs["input_ids"].shape[1]), with_kwargs=True)
    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    cache = build_state_cache(model, Dataset.from_list(rows), tmp_path, tokenizer=tokenizer, dtype=torch.float32, batch_size=3, examples_per_shard=7)
    handle.remove()
    lengths = [len(row["input_ids"]) for row in rows]
    shards = [sorted(lengths[:7]), sorted(lengths[7:])]
    assert widths == [max(shard[first : first + 3]) for shard in shards for first in range(0, len(shard), 3)]
    for index, row in enumerate(rows):
        torch.testing.assert_close(cache[index]["hidden_states"], live_states(model, Dataset.from_list([row]))[0])
        assert int(cache[index]["labels"]) == row["labels"]


def test_a_stale_or_foreign_cache_is_refused(tmp_path):
    model, data = tiny_mdpd_model(), ragged_dataset()
    cache = build_state_cache(model, data, tmp_path / "cache")
    cache.check(model)
    assert build_state_cache(model, data, tmp_path / "cache").key == cache.key  # the same key is reused

    with pytest.raises(StaleStateCacheError, match="inputs"):
        cache.check(model, ragged_dataset(seed=1))  # the cache of another dataset
    cache.check(tiny_mdpd_model(side_layers=[0, 2]))  # a side network that reads fewer layers uses the cache
    fewer_layers = build_state_cache(tiny_mdpd_model(side_layers=[0, 2]), data, tmp_path / "fewer")
    with pytest.raises(StaleStateCacheError, match="hidden_state_indices"):
        fewer_layers.check(model)  # one that reads a layer the cache lacks does not
    with pytest.raises(StaleStateCacheError, match="dtype"):
        build_state_cache(model, data, tmp_path / "cache", dtype=torch.float32)
    with pytest.raises(StaleStateCacheError, match="inputs"):
        build_state_cache(model, ragged_dataset(seed=1), tmp_path / "cache")
    rebuilt = build_state_cache(model, data, tmp_path / "cache", dtype=torch.float32, overwrite=True)
    assert rebuilt.key.dtype == "float32" and len(rebuilt) == len(data)

    copy = next(m for n, m in model.named_modules() if n.endswith("mdpd_copies.default"))
    with torch.no_grad():
        copy.weight.add_(0.01)  # what fading does to the states: they are stale now
    with pytest.raises(StaleStateCacheError, match="weights"):
        rebuilt.check(model)
    trainer = MDPDTrainer(model=model, args=training_args(tmp_path / "out", max_steps=1), train_dataset=data, state_cache=rebuilt)
    with pytest.raises(StaleStateCacheError, match="weights"):
        trainer.train()

    with pytest.raises(ValueError, match="side_network='sherl' is invalid.*'ladder' or 'unipt'"):
        build_state_cache(tiny_mdpd_model(side_network="sherl"), data, tmp_path / "sherl")


@pytest.mark.parametrize("side_network", ["ladder", "unipt"])
def test_training_on_the_cache_equals_training_on_live_states(tmp_path, side_network):
    """Dropout off and the backbone held still (``fading="head_only"``): the side network sees the same states
    either way, so the same seeds give the same loss terms and the same weights, with the side steps recomputed in
    backward (the default) or kept (``recompute=False``)."""
    data = ragged_dataset(rows=12)
    batches = [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    results = []
    for cached, recompute in ((False, None), (True, True), (True, False)):
        model = get_peft_model(without_dropout(tiny_text_model()), MDPDConfig(task_type="SEQ_CLS", reduction_factor=4, side_network=side_network, fading="head_only"))
        tuner = model.base_model
        cache = build_state_cache(model, data, tmp_path / f"{side_network}-{recompute}", dtype=torch.float32) if cached else None
        optimizer = torch.optim.AdamW([*tuner.mdpd_side.parameters(), *tuner.mdpd_distill.parameters()], lr=1e-2)
        model.train()
        terms = []
        for step, rows in enumerate(batches):
            torch.manual_seed(step)
            optimizer.zero_grad()
            if cached:
                side_pass = tuner.side_pass_on_cached_states(cache.collate([cache[i] for i in rows]), recompute=recompute)
                loss, losses = side_pass.loss, side_pass.losses
            else:
                length = max(sum(data[i]["attention_mask"]) for i in rows)  # dynamic padding, as the collate
                batch = {k: torch.tensor(data[rows][k])[:, :length] if k != "labels" else torch.tensor(data[rows][k]) for k in data.column_names}
                output = model(**batch)
                losses = output.mdpd_losses
                loss = losses["task"] + 4e-5 * losses["shallow"] + 6e-5 * losses["deep"]  # the side terms of the total
            loss.backward()
            optimizer.step()
            terms.append(torch.stack([losses[name].detach() for name in ("task", "shallow", "deep")]))
        results.append((torch.stack(terms), {n: p.detach().clone() for n, p in tuner.mdpd_side.named_parameters()}))
    (live_terms, live_weights), *cached_runs = results
    for cached_terms, cached_weights in cached_runs:
        torch.testing.assert_close(cached_terms, live_terms, rtol=1e-4, atol=1e-5)
        for name in live_weights:
            if name.endswith("confidence.bias"):  # UniPT's softmax is blind to it: its gradient is 0 plus rounding, which AdamW scales up
                continue
            torch.testing.assert_close(cached_weights[name], live_weights[name], rtol=1e-4, atol=1e-5, msg=name)


def test_an_interrupted_build_is_never_read_and_resumes(tmp_path):
    model, data = tiny_mdpd_model(), ragged_dataset(rows=13)
    expected = build_state_cache(model, data, tmp_path / "whole", batch_size=2, examples_per_shard=4)

    calls = []

    def interrupt_at_fifth_batch(module, args, kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt

    folder = tmp_path / "interrupted"
    handle = model.base_model.model.register_forward_pre_hook(interrupt_at_fifth_batch, with_kwargs=True)
    with pytest.raises(KeyboardInterrupt):
        build_state_cache(model, data, folder, batch_size=2, examples_per_shard=4)
    assert sorted(p.name for p in folder.glob("states-*")) == ["states-00000.safetensors", "states-00001.safetensors"]
    (folder / "states-00002.tmp").write_bytes(b"half a shard")  # what a kill during a write leaves
    with pytest.raises(FileNotFoundError, match="unfinished build"):
        StateCache(folder)

    written = {p.name: p.stat().st_mtime_ns for p in folder.glob("states-*.safetensors")}
    calls.clear()
    resumed = build_state_cache(model, data, folder, batch_size=2, examples_per_shard=4)
    handle.remove()
    assert len(calls) == 3  # shards 2 and 3 only: 4 + 1 examples in batches of 2
    assert {name: (folder / name).stat().st_mtime_ns for name in written} == written  # finished shards kept
    assert resumed.key == expected.key and len(resumed) == len(expected)
    for index in range(len(expected)):
        torch.testing.assert_close(resumed[index]["hidden_states"], expected[index]["hidden_states"], rtol=0, atol=0)


def training_args(output_dir, **arguments) -> TrainingArguments:
    defaults = dict(per_device_train_batch_size=4, learning_rate=1e-2, logging_steps=2, report_to=[], use_cpu=True, disable_tqdm=True, seed=0)
    return TrainingArguments(str(output_dir), **{**defaults, **arguments})


def side_then_fade_trainer(
    output_dir, data, cache, model=None, side_steps: int = 4, fade_steps: int = 4, callbacks=None, fade_side_outputs: str = "stored",
    eval_dataset=None, **arguments,
) -> MDPDTrainer:  # fmt: skip
    return MDPDTrainer(
        model=model or tiny_mdpd_model(),
        args=training_args(output_dir, max_steps=fade_steps, **arguments),
        side_phase_args=training_args(output_dir / "side", max_steps=side_steps, **arguments),
        train_dataset=data,
        eval_dataset=eval_dataset,
        state_cache=cache,
        callbacks=callbacks,
        fade_side_outputs=fade_side_outputs,
    )


def test_side_learning_rate_is_the_side_phases_rate(tmp_path):
    data = ragged_dataset(rows=8)
    model = tiny_mdpd_model()
    cache = build_state_cache(model, data, tmp_path / "cache")
    trainer = MDPDTrainer(model=model, args=training_args(tmp_path / "run"), train_dataset=data, state_cache=cache, side_learning_rate=3e-3)
    assert trainer._side_phase_trainer().args.learning_rate == 3e-3 and trainer.args.learning_rate == 1e-2


def trainables(model, part: str) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if part in n}


class Snapshots(TrainerCallback):
    """The side network and the LayerNorm copies at the beginning and end of each phase."""

    def __init__(self):
        self.taken = []

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.taken.append((trainables(model, "mdpd_side"), trainables(model, "mdpd_copies")))

    on_train_end = on_train_begin


def changed(before: dict, after: dict) -> bool:
    return any(not torch.equal(before[name], after[name]) for name in before)


def test_the_trainer_trains_the_side_network_on_the_cache_then_fades_through_the_backbone(tmp_path):
    data = ragged_dataset(rows=16)
    model = tiny_mdpd_model()
    cache = build_state_cache(model, data, tmp_path / "cache")
    backbone_passes = []
    model.base_model.model.register_forward_pre_hook(lambda *_: backbone_passes.append(1))
    snapshots = Snapshots()

    trainer = side_then_fade_trainer(tmp_path / "run", data, cache, model=model, callbacks=[snapshots])
    trainer.train()
    (side_0, copies_0), (side_1, copies_1), (side_2, copies_2), (side_3, copies_3) = snapshots.taken
    assert changed(side_0, side_1) and not changed(copies_0, copies_1)  # side phase: the side network alone
    assert not changed(side_1, side_3) and changed(copies_2, copies_3)  # fade phase: the backbone's copies alone
    assert len(backbone_passes) == 4  # the fade phase's 4 steps; the side phase ran none
    side_log = [entry for entry in trainer.side_phase_trainer.state.log_history if "loss" in entry]
    assert len(side_log) == 2 and all({"loss_task", "loss_shallow", "loss_deep"} <= set(entry) for entry in side_log)
    assert not any("loss_logits" in entry for entry in side_log)  # the side phase has no backbone logits
    fade_log = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert fade_log and all({"loss_logits", "loss_backbone_task"} <= set(entry) for entry in fade_log)
    assert (tmp_path / "run" / "side" / "final" / "adapter_model.safetensors").exists()

    # the fade loss is pluggable: here the backbone's own task loss alone
    fading = side_then_fade_trainer(tmp_path / "custom", data, cache, side_steps=1, fade_steps=2)  # a fresh model: the cache's
    fading.fade_loss = lambda outputs, inputs: outputs.mdpd_losses["backbone_task"]
    fading.train()
    assert [entry["loss"] for entry in fading.state.log_history if "loss" in entry] == pytest.approx(
        [entry["loss_backbone_task"] for entry in fading.state.log_history if "loss" in entry], rel=1e-5
    )


def test_both_phases_evaluate_live_and_a_new_run_trains_its_own_side_network(tmp_path):
    data = ragged_dataset(rows=16)
    cache = build_state_cache(tiny_mdpd_model(), data, tmp_path / "cache")
    evaluated = {"validation": data, "test": data}  # named datasets, as the accuracy suite evaluates
    first = side_then_fade_trainer(tmp_path / "run", data, cache, eval_dataset=evaluated, eval_strategy="steps", eval_steps=2)
    first.train()
    for trainer in (first.side_phase_trainer, first):  # evaluation batches are live: no cached states, no stored logits
        for metric in ("eval_validation_side_loss", "eval_test_faded_loss"):  # each named dataset logs on its own
            assert len([entry for entry in trainer.state.log_history if metric in entry]) == 2

    snapshots = Snapshots()  # a second run in the same folders, not resuming: its side phase trains anew
    second = side_then_fade_trainer(tmp_path / "run", data, cache, side_steps=2, fade_steps=1, callbacks=[snapshots])
    second.train()
    (side_0, _), (side_1, _), *_ = snapshots.taken
    assert changed(side_0, side_1) and second.side_phase_trainer.state.global_step == 2


def test_a_run_resumed_in_either_phase_ends_as_the_uninterrupted_run(tmp_path):
    data = ragged_dataset(rows=16)
    cache = build_state_cache(tiny_mdpd_model(), data, tmp_path / "cache")
    uninterrupted = side_then_fade_trainer(tmp_path / "a", data, cache, side_steps=2, fade_steps=2, save_steps=1)
    uninterrupted.train()
    expected = trainables(uninterrupted.model, "")
    for name, checkpoint in (("side", tmp_path / "a" / "side" / "checkpoint-1"), ("fade", tmp_path / "a" / "checkpoint-1")):
        resumed = side_then_fade_trainer(tmp_path / name, data, cache, side_steps=2, fade_steps=2, save_steps=1)
        resumed.train(resume_from_checkpoint=str(checkpoint))
        actual = trainables(resumed.model, "")
        for key in expected:
            if expected[key].requires_grad or "mdpd_" in key or "modules_to_save" in key:
                torch.testing.assert_close(actual[key], expected[key], rtol=0, atol=0, msg=f"{name}: {key}")


class SideCalls(TrainerCallback):
    """Counts the side network's forward calls, and the count when each phase begins and ends."""

    def __init__(self, model):
        self.calls, self.taken = 0, []
        model.base_model.mdpd_side["default"].register_forward_hook(lambda *_: setattr(self, "calls", self.calls + 1))

    def on_train_begin(self, args, state, control, **kwargs):
        self.taken.append(self.calls)

    on_train_end = on_train_begin


def test_the_fade_phase_reads_stored_side_logits_and_never_runs_the_side_network(tmp_path):
    data = ragged_dataset(rows=16)
    model = tiny_mdpd_model()
    cache = build_state_cache(model, data, tmp_path / "cache")
    side_calls = SideCalls(model)
    trainer = side_then_fade_trainer(tmp_path / "run", data, cache, model=model, callbacks=[side_calls])
    trainer.train()
    side_begin, side_end, fade_begin, fade_end = side_calls.taken
    assert side_end - side_begin == 4  # a call per side step
    assert fade_end == fade_begin  # the fade phase: not one call (the stored logits were computed between the phases)
    fade_log = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert fade_log and all({k for k in entry if k.startswith("loss_")} == {"loss_logits", "loss_backbone_task"} for entry in fade_log)

    stored = cache.side_outputs(model)  # eval mode on the cached states, in cache order
    model.eval()
    expected = torch.cat([model.base_model.side_logits_on_cached_states(cache.collate([cache[i] for i in range(j, j + 4)])) for j in (0, 4, 8, 12)])
    torch.testing.assert_close(stored, expected)

    live = side_then_fade_trainer(tmp_path / "live", data, cache, model=tiny_mdpd_model(), fade_side_outputs="live")
    live_calls = SideCalls(live.model)
    live.add_callback(live_calls)
    live.train()
    assert live_calls.taken[-1] - live_calls.taken[-2] == 4  # the live fade phase runs it every step


def test_a_forward_with_stored_side_logits_is_eq_3_plus_the_backbone_task_loss(tmp_path):
    model, data = tiny_mdpd_model(), ragged_dataset(rows=4)
    batch = {k: torch.tensor(data[k]) for k in data.column_names}
    stored = torch.randn(4, 3)
    model.train()
    output = model(**batch, mdpd_side_logits=stored)
    assert set(output.mdpd_losses) == {"logits", "backbone_task"}
    config = model.peft_config["default"]
    eq_3 = (stored - output.logits).pow(2).sum() / 4
    torch.testing.assert_close(output.loss, config.logits_loss_weight * eq_3 + config.backbone_task_loss_weight * output.mdpd_losses["backbone_task"])
    with pytest.raises(ValueError, match="mdpd_side_logits= must be the side network's sequence-level logits.*got \\(4, 2\\)"):
        model(**batch, mdpd_side_logits=torch.randn(4, 2))
    model.eval()
    assert model(**batch, mdpd_side_logits=stored).logits.shape == (4, 3)  # eval: ignored, never passed to the model


class RecomputedSideLogits:
    """The reference for stored side logits: the side network run on example i's cached states whenever it is read."""

    def __init__(self, cache, model):
        self.cache, self.tuner, self.reads = cache, model.base_model, 0

    def __len__(self) -> int:
        return len(self.cache)

    def __getitem__(self, index: int) -> torch.Tensor:
        self.reads += 1
        side = self.tuner.mdpd_side["default"]
        side.eval()
        try:
            return self.tuner.side_logits_on_cached_states(self.cache.collate([self.cache[index]]))[0]  # (C,)
        finally:
            side.train()


def test_a_fade_phase_on_stored_side_logits_equals_one_that_recomputes_them(tmp_path, monkeypatch):
    """Dropout off, the same seeds: reading each example's stored logits or recomputing them per step trains the
    same LayerNorm copies and head (the stored ones come from batches, the recomputed ones one example at a time)."""
    data = ragged_dataset(rows=16)
    cache = build_state_cache(without_dropout(tiny_mdpd_model()), data, tmp_path / "cache")
    stored = side_then_fade_trainer(tmp_path / "stored", data, cache, model=without_dropout(tiny_mdpd_model()))
    stored.train()
    recomputed = side_then_fade_trainer(tmp_path / "recomputed", data, cache, model=without_dropout(tiny_mdpd_model()))
    reference = []
    monkeypatch.setattr(phases, "stored_side_logits", lambda cache, model: reference.append(RecomputedSideLogits(cache, model)) or reference[0])
    recomputed.train()
    assert reference[0].reads == 16  # 4 fade steps of 4
    expected, actual = trainables(recomputed.model, ""), trainables(stored.model, "")
    assert changed(trainables(tiny_mdpd_model(), "mdpd_copies"), trainables(stored.model, "mdpd_copies"))
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=1e-4, atol=1e-5, msg=name)


def test_stored_side_outputs_are_keyed_like_the_states(tmp_path):
    data = ragged_dataset()
    model = tiny_mdpd_model()
    cache = build_state_cache(model, data, tmp_path / "cache")
    with pytest.raises(FileNotFoundError, match="no side outputs"):
        cache.side_outputs(model)
    logits = cache.store_side_outputs(model, batch_size=5)
    assert logits.shape == (len(data), 3) and logits.dtype == torch.float32
    torch.testing.assert_close(StateCache(tmp_path / "cache").side_outputs(model), logits, rtol=0, atol=0)

    side = model.base_model.mdpd_side["default"]
    weight = next(side.parameters())
    with torch.no_grad():
        weight.add_(0.01)  # the side network trained on
    with pytest.raises(StaleStateCacheError, match="side network weights differ"):
        cache.side_outputs(model)
    cache.store_side_outputs(model)  # beside the first side network's
    with torch.no_grad():
        weight.sub_(0.01)
    torch.testing.assert_close(cache.side_outputs(model), logits, rtol=0, atol=0)

    other = build_state_cache(model, ragged_dataset(seed=1), tmp_path / "other")
    for path in (tmp_path / "cache").glob("side-logits-*"):  # the same side network's outputs on other states
        (other.folder / path.name).write_bytes(path.read_bytes())
    with pytest.raises(StaleStateCacheError, match="differ in states"):
        other.side_outputs(model)
    rebuilt = build_state_cache(model, data, tmp_path / "cache", dtype=torch.float32, overwrite=True)
    with pytest.raises(FileNotFoundError, match="no side outputs"):  # a rebuild drops the side outputs of the old states
        rebuilt.side_outputs(model)

    token_model = get_peft_model(tiny_text_model(task="token_cls"), MDPDConfig(task_type="TOKEN_CLS", reduction_factor=4))
    with pytest.raises(ValueError, match="fade_side_outputs='stored' is invalid.*'live' for task_type='TOKEN_CLS'"):
        MDPDTrainer(model=token_model, args=training_args(tmp_path / "token"), train_dataset=data, state_cache=cache)
    with pytest.raises(ValueError, match="fade_side_outputs='cached' is invalid"):
        MDPDTrainer(model=model, args=training_args(tmp_path / "bad"), train_dataset=data, state_cache=cache, fade_side_outputs="cached")


def test_the_key_of_a_tokenizer_ignores_the_truncation_and_padding_its_last_call_left(minilm_path):
    """A second run that finds its tokenized split in 🤗 datasets' cache never calls the tokenizer: same key."""
    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    fresh = tokenizer_hash(tokenizer)
    tokenizer(["a short text", "another"], truncation=True, max_length=8)
    tokenizer.pad({"input_ids": [[101, 102], [101]]})
    assert tokenizer_hash(tokenizer) == fresh
    tokenizer.add_tokens(["<new>"])
    assert tokenizer_hash(tokenizer) != fresh  # the vocabulary still counts


def test_a_minilm_cache_holds_the_bytes_the_benchmark_counts(tmp_path, minilm_path):
    """The real MiniLM, tokenized at max length 64: real tokens x 7 states x 384 channels x 2 bytes, plus an offset
    and a label per example (``benchmarks/state_cache.py --figures``), and a safetensors header."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    model = get_peft_model(AutoModelForSequenceClassification.from_pretrained(minilm_path, num_labels=2), MDPDConfig(task_type="SEQ_CLS"))
    sentences = ["a gripping, beautifully shot film.", "dull.", "the plot never quite comes together, though the cast tries hard.", "fun"]
    data = Dataset.from_dict({**tokenizer(sentences, truncation=True, max_length=64), "labels": [1, 0, 0, 1]})
    with pytest.raises(ValueError, match="max_length=4 is invalid"):
        build_state_cache(model, data, tmp_path / "short", tokenizer=tokenizer, max_length=4)
    cache = build_state_cache(model, data, tmp_path / "cache", tokenizer=tokenizer, max_length=64)
    tokens = sum(len(ids) for ids in data["input_ids"])
    expected = tokens * 7 * 384 * 2 + len(data) * 16
    assert expected < cache.num_bytes < expected + 1024
    cache.check(model, data)
    assert [len(cache[i]["hidden_states"]) for i in range(4)] == [len(ids) for ids in data["input_ids"]]
