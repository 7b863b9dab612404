"""Kept side-network tasks: one encoder pass feeds every task, tasks are independent, every problem type trains,
training on cached states equals training live, and bad input fails early."""

import copy
import json

import pytest
import torch
import transformers
from peft import PeftModel, get_peft_model
from transformers import TrainingArguments

from conftest import VOCAB, text_batch
from mdpd_peft import SideTaskConfig, SideTaskTrainer, StaleStateCacheError, build_state_cache
from test_state_cache import ragged_dataset


def tiny_encoder(seed: int = 0) -> transformers.BertModel:
    torch.manual_seed(seed)
    config = transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128, max_position_embeddings=64,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    return transformers.BertModel(config).eval()


def three_tasks(encoder=None):
    model = get_peft_model(encoder or tiny_encoder(), SideTaskConfig(id2label={0: "neg", 1: "pos"}, reduction_factor=4), adapter_name="sentiment")
    model.add_adapter("topic", SideTaskConfig(num_labels=3, reduction_factor=4, side_network="unipt"))
    model.add_adapter("score", SideTaskConfig(problem_type="regression", reduction_factor=4, head_input="side"))
    model.base_model.set_adapter(model.base_model.tasks)
    return model.eval()


def count_layer_calls(model) -> list[int]:
    calls = [0]
    first_layer = model.base_model.encoder.layers(model.base_model.model)[0]
    first_layer.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def inputs(batch: dict) -> dict:
    return {key: batch[key] for key in ("input_ids", "attention_mask")}


def test_one_encoder_pass_feeds_every_task_and_each_equals_the_task_run_alone():
    model, batch = three_tasks(), inputs(text_batch())
    calls = count_layer_calls(model)
    with torch.no_grad():
        together = model(**batch).task_logits
    assert calls[0] == 1 and list(together) == ["sentiment", "topic", "score"]
    assert [tuple(v.shape) for v in together.values()] == [(6, 2), (6, 3), (6, 1)]
    for task in together:
        with torch.no_grad():
            alone = model(**batch, tasks=[task])
        torch.testing.assert_close(alone.logits, together[task], rtol=0, atol=0)
    assert calls[0] == 4


def test_adding_or_deleting_a_task_never_changes_another_tasks_outputs():
    model, batch = three_tasks(), inputs(text_batch())
    with torch.no_grad():
        before = model(**batch).task_logits
    model.add_adapter("extra", SideTaskConfig(num_labels=5, reduction_factor=4))
    model.base_model.set_adapter(model.base_model.tasks)
    model.delete_adapter("topic")
    assert model.base_model.tasks == ["sentiment", "score", "extra"] and model.active_adapters == ["sentiment", "score", "extra"]
    with torch.no_grad():
        after = model(**batch).task_logits
    for task in ("sentiment", "score"):
        assert torch.equal(before[task], after[task])


def test_each_task_saves_as_an_adapter_that_loads_alone(tmp_path):
    model, batch = three_tasks(), inputs(text_batch())
    with torch.no_grad():
        expected = model(**batch).task_logits
    model.save_pretrained(tmp_path)
    for task in expected:
        alone = PeftModel.from_pretrained(tiny_encoder(), tmp_path / task, adapter_name=task).eval()
        assert alone.peft_config[task].id2label == model.peft_config[task].id2label
        with torch.no_grad():
            assert torch.equal(alone(**batch).logits, expected[task])


def test_only_the_training_task_trains_and_the_encoder_stays_frozen():
    model, batch = three_tasks(), text_batch(num_labels=3)
    model.base_model.set_adapter("topic")
    trainable = {name.split(".")[2] for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"topic"}
    encoder_before = {k: v.clone() for k, v in model.base_model.model.state_dict().items()}
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert all(torch.equal(v, model.base_model.model.state_dict()[k]) for k, v in encoder_before.items())


@pytest.mark.parametrize(
    "config, labels",
    [
        (SideTaskConfig(num_labels=3, label_smoothing=0.1), torch.tensor([0, 2, 1, 1, 0, 2])),
        (SideTaskConfig(num_labels=4, problem_type="multi_label_classification"), (torch.rand(6, 4, generator=torch.Generator().manual_seed(0)) > 0.5).float()),
        (SideTaskConfig(problem_type="regression"), torch.linspace(-1, 1, 6)),
        (SideTaskConfig(num_labels=3, problem_type="token_classification"), torch.randint(0, 3, (6, 16), generator=torch.Generator().manual_seed(0))),
        (SideTaskConfig(num_labels=3, side_network="sherl", pooling="first"), torch.tensor([0, 2, 1, 1, 0, 2])),
    ],
    ids=["single-label", "multi-label", "regression", "token", "sherl"],
)
def test_every_problem_type_trains(config, labels):
    model = get_peft_model(tiny_encoder(), config, adapter_name="task").train()
    batch = inputs(text_batch())
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-2)
    losses = []
    for _ in range(8):
        output = model(**batch, labels=labels)
        losses.append(output.loss.item())
        output.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    expected_shape = (6, 16, 3) if config.per_token else (6, config.num_labels)
    assert tuple(output.logits.shape) == expected_shape and losses[-1] < losses[0]


def test_the_gated_head_starts_as_a_linear_probe_of_the_encoders_final_representation():
    """With the gate closed (logit -> -inf) the head reads the encoder's own output, mean-pooled over real tokens."""
    model = get_peft_model(tiny_encoder(), SideTaskConfig(num_labels=3, head_gate_init=-60.0), adapter_name="probe").eval()
    batch = inputs(text_batch())
    with torch.no_grad():
        logits = model(**batch).logits
        hidden = model.base_model.model(**batch).last_hidden_state
    real = batch["attention_mask"].unsqueeze(-1).float()
    pooled = (hidden * real).sum(1) / real.sum(1)
    classifier = model.base_model.kept_tasks["probe"].head.classifier
    torch.testing.assert_close(logits, classifier(pooled), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cached", [False, True])
def test_the_classifier_starts_as_the_probe_fitted_on_the_training_set(tmp_path, cached):
    """``head_init="probe"``: before the first step the classifier is scikit-learn's L2 logistic regression
    on what it reads (gate shut: the pooled encoder state) at C = 1 on unit-norm features, i.e. 1 / mean |x|^2 here."""
    from sklearn.linear_model import LogisticRegression

    data = ragged_dataset(rows=24)
    model = get_peft_model(tiny_encoder(), SideTaskConfig(num_labels=3, reduction_factor=4, head_gate_init=-60.0, head_init="probe"), adapter_name="task")
    train = build_state_cache(model, data, tmp_path / "cache", dtype=torch.float32) if cached else data
    args = TrainingArguments(tmp_path / "out", max_steps=1, per_device_train_batch_size=5, report_to=[], use_cpu=True, save_strategy="no")
    SideTaskTrainer(model=model, args=args, train_dataset=train).fit_head_as_probe()
    with torch.no_grad():
        batch = {key: torch.tensor(data[key]) for key in ("input_ids", "attention_mask")}
        real = batch["attention_mask"].unsqueeze(-1).float()
        pooled = ((model.base_model.model(**batch).last_hidden_state * real).sum(1) / real.sum(1)).numpy()
    reference = LogisticRegression(C=1.0 / (pooled**2).sum(-1).mean(), tol=1e-10, max_iter=10_000).fit(pooled, data["labels"])
    classifier = model.base_model.kept_tasks["task"].head.classifier
    torch.testing.assert_close(classifier.weight, torch.tensor(reference.coef_, dtype=torch.float32), rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(classifier.bias, torch.tensor(reference.intercept_, dtype=torch.float32), rtol=1e-3, atol=1e-3)


def test_a_vision_task_reads_the_encoders_final_layernorm():
    torch.manual_seed(0)
    vit = transformers.ViTModel(transformers.ViTConfig(image_size=16, patch_size=4, num_channels=1, hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128), add_pooling_layer=False).eval()
    model = get_peft_model(vit, SideTaskConfig(num_labels=4, pooling="first", head_gate_init=-60.0), adapter_name="digits").eval()
    assert model.base_model.final_norm is vit.layernorm
    pixels = torch.randn(3, 1, 16, 16)
    with torch.no_grad():
        logits = model(pixel_values=pixels).logits
        cls = vit(pixel_values=pixels).last_hidden_state[:, 0]
    torch.testing.assert_close(logits, model.base_model.kept_tasks["digits"].head.classifier(cls), rtol=1e-5, atol=1e-5)


def test_training_on_cached_states_equals_training_live(tmp_path):
    """Dropout off: the same seeds and batches give the same task weights on cached and on live encoder states (the
    classifier random: a probe fit's L-BFGS can turn float rounding into ~1e-5 differences)."""
    data = ragged_dataset(rows=12)
    weights = []
    for cached in (False, True):
        model = get_peft_model(tiny_encoder(), SideTaskConfig(num_labels=3, reduction_factor=4, head_init="random"), adapter_name="task")
        train = build_state_cache(model, data, tmp_path / "cache", dtype=torch.float32) if cached else data
        args = TrainingArguments(tmp_path / f"out{cached}", max_steps=3, per_device_train_batch_size=4, learning_rate=1e-2, report_to=[], use_cpu=True, save_strategy="no", seed=0)
        SideTaskTrainer(model=model, args=args, train_dataset=train).train()
        weights.append({k: v.clone() for k, v in model.base_model.kept_tasks.state_dict().items()})
    for name, value in weights[0].items():
        torch.testing.assert_close(weights[1][name], value, rtol=1e-4, atol=1e-5)


def test_group_by_length_on_the_cache_batches_examples_of_similar_length(tmp_path):
    """transformers' length-grouped sampler, fed the cached lengths (no example read): 64 examples in batches of 4
    make megabatches of 4 batches, each sorted longest first, and the batch holding the longest example runs first."""
    data = ragged_dataset(rows=64)
    model = get_peft_model(tiny_encoder(), SideTaskConfig(num_labels=3, reduction_factor=4), adapter_name="task")
    cache = build_state_cache(model, data, tmp_path / "cache")
    lengths = [sum(mask) for mask in data["attention_mask"]]
    assert cache.lengths == lengths
    args = TrainingArguments(
        tmp_path / "out", max_steps=3, per_device_train_batch_size=4, train_sampling_strategy="group_by_length", report_to=[], use_cpu=True, save_strategy="no"
    )
    trainer = SideTaskTrainer(model=model, args=args, train_dataset=cache)
    widths = [batch["hidden_states"].shape[1] for batch in trainer.get_train_dataloader()]
    assert len(widths) == 16 and widths[0] == max(lengths)
    assert all(megabatch == sorted(megabatch, reverse=True) for megabatch in (widths[i : i + 4] for i in range(0, 16, 4)))
    assert trainer.train().training_loss > 0
    assert trainer.evaluate(cache)["eval_loss"] > 0  # an evaluation split's cache is grouped by its lengths too


def test_two_tasks_on_the_same_inputs_share_one_cache(tmp_path):
    data = ragged_dataset(rows=12)
    model = get_peft_model(tiny_encoder(), SideTaskConfig(num_labels=3, reduction_factor=4), adapter_name="first")
    cache = build_state_cache(model, data, tmp_path / "cache")
    model.add_adapter("second", SideTaskConfig(num_labels=2, reduction_factor=4))
    relabelled = data.map(lambda row: {"labels": row["labels"] % 2})
    second = cache.with_targets(model, relabelled)
    assert [int(second[i]["labels"]) for i in range(12)] == relabelled["labels"]
    assert [int(cache[i]["labels"]) for i in range(12)] == data["labels"]  # the cache itself is unchanged
    args = TrainingArguments(tmp_path / "out", max_steps=2, per_device_train_batch_size=4, report_to=[], use_cpu=True, save_strategy="no")
    SideTaskTrainer(model=model, args=args, task="second", train_dataset=second).train()
    with pytest.raises(StaleStateCacheError, match="other inputs"):
        cache.with_targets(model, ragged_dataset(rows=12, seed=1))


def test_evaluation_predictions_are_the_task_logits(tmp_path):
    """compute_metrics gets the task's (B, C) logits, not a tuple with task_logits and the encoder's states."""
    data = ragged_dataset(rows=12)
    model = get_peft_model(tiny_encoder(), SideTaskConfig(num_labels=3, reduction_factor=4), adapter_name="task")
    args = TrainingArguments(tmp_path / "out", per_device_eval_batch_size=4, report_to=[], use_cpu=True)
    seen = []
    metrics = lambda prediction: seen.append(prediction.predictions) or {"accuracy": float((prediction.predictions.argmax(-1) == prediction.label_ids).mean())}  # noqa: E731
    result = SideTaskTrainer(model=model, args=args, eval_dataset=data, compute_metrics=metrics).evaluate()
    assert seen[0].shape == (12, 3) and 0.0 <= result["eval_accuracy"] <= 1.0


def test_evaluation_on_a_cache_of_the_split_equals_live_evaluation_without_the_encoder(tmp_path):
    data = ragged_dataset(rows=12)
    model = get_peft_model(tiny_encoder(), SideTaskConfig(num_labels=3, reduction_factor=4), adapter_name="task")
    cache = build_state_cache(model, data, tmp_path / "cache", dtype=torch.float32)
    calls, seen = count_layer_calls(model), []
    metrics = lambda prediction: seen.append(prediction.predictions) or {"accuracy": float((prediction.predictions.argmax(-1) == prediction.label_ids).mean())}  # noqa: E731
    args = TrainingArguments(tmp_path / "out", per_device_eval_batch_size=4, report_to=[], use_cpu=True)
    result = SideTaskTrainer(model=model, args=args, eval_dataset={"live": data, "cached": cache}, compute_metrics=metrics).evaluate()
    assert calls[0] == 3  # the live split's three batches; the cached split never runs the encoder
    torch.testing.assert_close(torch.as_tensor(seen[1]), torch.as_tensor(seen[0]), rtol=1e-4, atol=1e-5)
    assert result["eval_cached_accuracy"] == result["eval_live_accuracy"]
    assert result["eval_cached_loss"] == pytest.approx(result["eval_live_loss"], rel=1e-4)
    with pytest.raises(StaleStateCacheError, match="another model"):  # a cache of other weights is refused up front
        SideTaskTrainer(model=get_peft_model(tiny_encoder(seed=1), SideTaskConfig(num_labels=3, reduction_factor=4)), args=args, eval_dataset=cache)


def test_a_trainer_on_a_cache_predicts_live_data_and_caches_alike(tmp_path):
    """``predict`` collates as evaluation does: live rows by the user's collator, a cache by its own (held-out folds
    predicted through the encoder by a task trained on the others' cache)."""
    data = ragged_dataset(rows=12)
    model = get_peft_model(tiny_encoder(), SideTaskConfig(num_labels=3, reduction_factor=4), adapter_name="task")
    trained_on, held_out = data.select(range(8)), data.select(range(8, 12))
    cache = build_state_cache(model, trained_on, tmp_path / "cache", dtype=torch.float32)
    held_out_cache = build_state_cache(model, held_out, tmp_path / "held-out", dtype=torch.float32)
    args = TrainingArguments(tmp_path / "out", max_steps=2, per_device_train_batch_size=4, report_to=[], use_cpu=True, save_strategy="no")
    trainer = SideTaskTrainer(model=model, args=args, train_dataset=cache)
    trainer.train()
    live = torch.as_tensor(trainer.predict(held_out).predictions)
    assert live.shape == (4, 3)
    torch.testing.assert_close(torch.as_tensor(trainer.predict(held_out_cache).predictions), live, rtol=1e-4, atol=1e-5)


def test_a_task_that_reruns_encoder_layers_is_refused_by_the_cache_and_trains_live(tmp_path):
    model = get_peft_model(tiny_encoder(), SideTaskConfig(num_labels=3, side_network="sherl"), adapter_name="task")
    with pytest.raises(ValueError, match=r"side_network='sherl' is invalid.*'ladder' or 'unipt'.*train it live"):
        build_state_cache(model, ragged_dataset(), tmp_path / "cache")
    args = TrainingArguments(tmp_path / "out", max_steps=2, per_device_train_batch_size=4, report_to=[], use_cpu=True, save_strategy="no")
    assert SideTaskTrainer(model=model, args=args, train_dataset=ragged_dataset()).train().training_loss > 0


def test_bad_input_fails_early_with_the_allowed_values(tmp_path):
    model, batch = three_tasks(), inputs(text_batch())
    with pytest.raises(ValueError, match=r"unknown task\(s\) \['sentimant'\].*\['sentiment', 'topic', 'score'\]"):
        model(**batch, tasks=["sentimant"])
    with pytest.raises(ValueError, match=r"Unknown task\(s\) \['x'\]"):
        model.base_model.set_adapter("x")
    with pytest.raises(ValueError, match=r"labels= train one task, but 3 would run"):
        model(**batch, labels=torch.zeros(6, dtype=torch.long))
    with pytest.raises(ValueError, match=r"labels must be class ids in \[0, 2\]"):
        model(**batch, tasks=["topic"], labels=torch.full((6,), 7))
    with pytest.raises(ValueError, match=r"id2label=.* a label name for each class index 0..2"):
        SideTaskConfig(num_labels=3, id2label={0: "a", 1: "b"})
    with pytest.raises(ValueError, match=r"problem_type='ranking' is invalid.*one of \('single_label_classification'"):
        SideTaskConfig(num_labels=2, problem_type="ranking")
    with pytest.raises(ValueError, match=r"head_init='lp' is invalid.*one of \('probe', 'random'\)"):
        SideTaskConfig(num_labels=2, head_init="lp")
    with pytest.raises(ValueError, match=r"num_labels=None is invalid"):
        SideTaskConfig()
    model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="trained on another encoder: its weights differ"):
        PeftModel.from_pretrained(tiny_encoder(seed=1), tmp_path / "topic", adapter_name="topic")
    with pytest.raises(ValueError, match="cannot be merged"):
        model.merge_and_unload()


def test_the_stacked_serving_path_equals_each_tasks_own_ladder():
    """Served (no autograd), ladders of one shape run stacked; with autograd each task runs its own ladder."""
    model, batch = three_tasks(), inputs(text_batch())
    model.add_adapter("pruned_too", SideTaskConfig(num_labels=4, reduction_factor=4, pooling="first"))
    model.base_model.set_adapter(model.base_model.tasks)
    with torch.no_grad():
        served = model(**batch).task_logits
    own = model(**batch).task_logits  # autograd on: every task through its own modules
    for task, logits in served.items():
        torch.testing.assert_close(logits, own[task].detach(), rtol=1e-5, atol=1e-5)


def test_feature_distillation_adds_the_encoders_features_as_teacher_live_and_cached(tmp_path):
    data = ragged_dataset(rows=8)
    model = get_peft_model(tiny_encoder(), SideTaskConfig(num_labels=3, reduction_factor=4, feature_distillation=True), adapter_name="task").train()
    batch = {key: torch.tensor(data[key]) for key in ("input_ids", "attention_mask", "labels")}
    live = model(**batch)
    live_task = model.base_model.latest_losses["task"]
    assert set(model.base_model.latest_losses) == {"task", "shallow", "deep"} and live.loss > live_task
    live.loss.backward()
    assert model.base_model.kept_tasks["task"].distiller.aligners[0].down.weight.grad is not None
    cache = build_state_cache(model, data, tmp_path / "cache", dtype=torch.float32)
    cached = model.base_model.side_pass_on_cached_states(cache.collate([cache[i] for i in range(8)]))
    assert set(cached.losses) == {"task", "shallow", "deep"}
    torch.testing.assert_close(cached.losses["task"].detach(), live_task, rtol=1e-4, atol=1e-4)  # the same states, dropout off


def test_served_outputs_follow_a_fused_optimizers_steps():
    """torch's fused AdamW (the Trainer's default) writes weights in place without bumping their versions; serving
    between training steps must still use the current weights, as the Trainer's evaluation after each epoch does."""
    model, batch = three_tasks(), inputs(text_batch())
    model.base_model.set_adapter("sentiment")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, fused=True)
    labels = torch.tensor([0, 1, 0, 1, 1, 0])
    for _ in range(2):
        with torch.no_grad():
            served = model(**batch).logits  # stacked copies of the current weights
        model(**batch, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    with torch.no_grad():
        served_after = model(**batch).logits
    own = model(**batch).logits.detach()  # autograd on: the task's own modules, its current weights
    assert not torch.allclose(served_after, served)
    torch.testing.assert_close(served_after, own, rtol=1e-5, atol=1e-5)


def test_kept_ladders_have_heads_of_their_own_width_and_older_saved_tasks_keep_theirs(tmp_path):
    """SideTaskConfig's ladders default to 16-wide heads (the backbone's count, LST's, with side_head_dim=None); a task
    saved before side_head_dim existed loads with the heads it was trained with."""
    encoder = tiny_encoder()  # 4 heads; the side width at r = 4 is 16
    model = get_peft_model(encoder, SideTaskConfig(num_labels=2, reduction_factor=4), adapter_name="wide")
    model.add_adapter("lst", SideTaskConfig(num_labels=2, reduction_factor=4, side_head_dim=None))
    model.add_adapter("narrow", SideTaskConfig(num_labels=2, reduction_factor=4, side_head_dim=8))
    heads = {name: task.side.blocks[0].num_heads for name, task in model.base_model.kept_tasks.items()}
    assert heads == {"wide": 1, "lst": 4, "narrow": 2}

    model.base_model.set_adapter(["lst"])
    batch = inputs(text_batch())
    with torch.no_grad():
        expected = model(**batch).logits
    model.save_pretrained(tmp_path, selected_adapters=["lst"])
    config_file = tmp_path / "lst" / "adapter_config.json"
    saved = json.loads(config_file.read_text())
    assert saved.pop("side_head_dim") is None
    config_file.write_text(json.dumps(saved))  # as saved before the setting existed
    loaded = PeftModel.from_pretrained(tiny_encoder(), tmp_path / "lst", adapter_name="lst").eval()
    assert loaded.peft_config["lst"].side_head_dim is None and loaded.base_model.kept_tasks["lst"].side.blocks[0].num_heads == 4
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, expected)


def test_first_and_mean_pooling_reads_the_first_token_beside_the_mean_of_the_others():
    """pooling="first_and_mean" (DINOv2's classifier): with the gate shut, the head is a probe of [CLS, mean(others)]."""
    model = get_peft_model(tiny_encoder(), SideTaskConfig(num_labels=3, reduction_factor=4, pooling="first_and_mean", head_gate_init=-30.0))
    head = model.base_model.kept_tasks["default"].head
    assert head.gate_logits.shape == (128,) and head.classifier.in_features == 128  # two parts of the encoder's 64
    batch = inputs(text_batch())
    with torch.no_grad():
        output = model(**batch)
    logits, hidden = output.logits, output.last_hidden_state  # (B, C), the encoder's (B, N, 64)
    real = batch["attention_mask"].bool()
    others = (hidden[:, 1:] * real[:, 1:, None]).sum(1) / real[:, 1:].sum(1, keepdim=True)
    torch.testing.assert_close(logits, head.classifier(torch.cat([hidden[:, 0], others], dim=-1)), rtol=1e-5, atol=1e-5)
    token_task = get_peft_model(tiny_encoder(), SideTaskConfig(num_labels=3, reduction_factor=4, pooling="first_and_mean", problem_type="token_classification"))
    assert token_task.base_model.kept_tasks["default"].head.classifier.in_features == 64  # token classification does not pool


def test_attention_pooling_starts_as_the_mean_masks_padding_and_learns_its_query(tmp_path):
    """pooling="attention": its zero query weighs every real token alike (the mean pooling task, logit for logit);
    a query that is not zero weighs no padding token, whatever the padding; a bfloat16 model pools alike; the query
    trains and is saved with the task."""
    mean = get_peft_model(tiny_encoder(), SideTaskConfig(num_labels=3, reduction_factor=4)).eval()
    model = get_peft_model(tiny_encoder(), SideTaskConfig(num_labels=3, reduction_factor=4, pooling="attention")).eval()
    batch = inputs(text_batch(pad_from=5))
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, mean(**batch).logits, rtol=1e-5, atol=1e-6)
    head = model.base_model.kept_tasks["default"].head
    torch.manual_seed(1)
    head.pooling_query.data.normal_()
    with torch.no_grad():
        output = model(**batch)
        weights = head.pooling_weights(output.last_hidden_state, batch["attention_mask"])
        longer = {name: torch.nn.functional.pad(value, (0, 20)) for name, value in batch.items()}  # 20 more padding tokens
        torch.testing.assert_close(model(**longer).logits, output.logits, rtol=1e-5, atol=1e-5)
    assert torch.all(weights[0, 5:] == 0) and torch.allclose(weights.sum(-1), torch.ones(6)) and weights[1].std() > 0
    with torch.no_grad():  # the scores are computed in float32 whatever the model's dtype
        half = copy.deepcopy(model).to(torch.bfloat16)(**batch).logits
    torch.testing.assert_close(half.float(), output.logits, rtol=0, atol=0.1)

    args = TrainingArguments(str(tmp_path / "run"), max_steps=2, learning_rate=1e-2, report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True)
    query = head.pooling_query.detach().clone()
    SideTaskTrainer(model=model, args=args, train_dataset=ragged_dataset()).train()
    assert not torch.equal(head.pooling_query, query)
    model.save_pretrained(tmp_path / "task")
    loaded = PeftModel.from_pretrained(tiny_encoder(), tmp_path / "task")
    assert torch.equal(loaded.base_model.kept_tasks["default"].head.pooling_query, head.pooling_query)
