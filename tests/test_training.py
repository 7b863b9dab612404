"""Gradients, frozen weights and loss terms on a real (tiny, random) BERT with real PEFT."""

import math

import pytest
import torch

from mdpd_peft import distillation
from mdpd_peft.side_networks import ladder
from mdpd_peft.distillation import sample_token_mask
from conftest import text_batch, tiny_mdpd_model, train_steps


def test_gradients_reach_exactly_the_trainable_set():
    model = tiny_mdpd_model()
    model.train()
    model(**text_batch()).loss.backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad == trainable
    # The trainable set: side network, distillation modules, LayerNorm copies, the task head; nothing else.
    kinds = {"mdpd_side", "mdpd_distill", "mdpd_copies", "modules_to_save"}
    assert all(any(kind in n.split(".") for kind in kinds) for n in trainable)
    norm_copies = [n for n in trainable if "mdpd_copies" in n]
    assert len(norm_copies) == 2 * (1 + 2 * 4)  # weight + bias of the embedding LayerNorm and 2 per layer


def test_frozen_weights_never_move_and_trainables_do():
    model = tiny_mdpd_model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train_steps(model, text_batch(), steps=4)
    for name, param in model.named_parameters():
        moved = not torch.equal(before[name], param)
        assert moved == param.requires_grad, name


def test_every_loss_term_is_finite_and_non_zero_and_sums_to_the_loss():
    model = tiny_mdpd_model()
    model.train()
    output = model(**text_batch(batch=8, length=24))
    terms = output.mdpd_losses
    assert set(terms) == {"task", "shallow", "deep", "logits", "backbone_task"}
    for name, value in terms.items():
        assert math.isfinite(value.item()) and value.item() > 0, name
    config = model.peft_config["default"]
    weights = {
        "task": 1.0,
        "shallow": config.shallow_loss_weight,
        "deep": config.deep_loss_weight,
        "logits": config.logits_loss_weight,
        "backbone_task": config.backbone_task_loss_weight,
    }
    expected = sum(weights[name] * value for name, value in terms.items())
    torch.testing.assert_close(output.loss, expected)


def test_side_path_sends_no_gradient_into_the_backbone():
    """With both backbone terms off, only the side network learns: its input from the backbone is detached."""
    model = tiny_mdpd_model(logits_loss_weight=0.0, backbone_task_loss_weight=0.0)
    model.train()
    model(**text_batch()).loss.backward()
    backbone_grads = [n for n, p in model.named_parameters() if ("mdpd_copies" in n or "modules_to_save" in n) and p.grad is not None and p.grad.abs().sum() > 0]
    assert backbone_grads == []
    assert model.base_model.mdpd_side["default"].embed_down.weight.grad.abs().sum() > 0


def test_masked_generation_masks_only_real_tokens_and_about_lambda_of_them():
    real = torch.ones(64, 32, dtype=torch.bool)
    real[:, 20:] = False
    torch.manual_seed(0)
    masked = sample_token_mask(real, 0.5)
    assert not masked[:, 20:].any()
    assert masked[:, :20].float().mean().item() == pytest.approx(0.5, abs=0.05)
    assert not sample_token_mask(real, 0.0).any()


def test_padding_tokens_do_not_change_the_loss_terms_of_real_tokens():
    """Extra padding changes neither the side logits nor the shallow (unmasked) distillation term."""
    model = tiny_mdpd_model(eval_path="side")
    short = text_batch(batch=4, length=12, pad_from=None)
    padded = {k: v.clone() for k, v in short.items()}
    padded["input_ids"] = torch.cat([short["input_ids"], torch.zeros(4, 8, dtype=torch.long)], dim=1)
    padded["attention_mask"] = torch.cat([short["attention_mask"], torch.zeros(4, 8, dtype=torch.long)], dim=1)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(**short).logits, model(**padded).logits, atol=1e-5, rtol=1e-5)


def test_gate_values_start_at_an_even_mix():
    model = tiny_mdpd_model()
    torch.testing.assert_close(model.base_model.gate_values(), torch.full((4,), 0.5))


def test_a_pooler_in_modules_to_save_trains_beside_the_head():
    """The side head takes its size from the task head, not from another saved module listed first."""
    model = tiny_mdpd_model(modules_to_save=["pooler", "classifier"])
    output = train_steps(model, text_batch(), steps=2)
    assert model.base_model.mdpd_side["default"].head.out_features == 3
    assert math.isfinite(output.loss.item())


def test_a_deep_copy_runs_on_its_own_hooks():
    """copy.deepcopy (used by save_faded_model and by users) gives a model whose hooks feed its own side network."""
    import copy

    model = tiny_mdpd_model()
    clone = copy.deepcopy(model)
    model.base_model._capture = None
    output = train_steps(clone, text_batch(), steps=1)
    assert set(output.mdpd_losses) == {"task", "shallow", "deep", "logits", "backbone_task"}
    assert model.base_model._capture is None  # nothing leaked into the original


def test_checkpointed_fading_keeps_the_gradients_and_fades_to_a_plain_model():
    batch = text_batch()
    grads = {}
    for checkpointing in (False, True):
        model = tiny_mdpd_model(fading="checkpointed" if checkpointing else "backprop")
        model.train()
        torch.manual_seed(0)  # the same dropout and masks in both runs
        model(**batch).loss.backward()
        grads[checkpointing] = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert grads[True].keys() == grads[False].keys()
    for name in grads[False]:
        torch.testing.assert_close(grads[True][name], grads[False][name], msg=name)
    faded = model.merge_and_unload()
    assert not any(getattr(module, "gradient_checkpointing", False) for module in faded.modules())


def test_recomputing_the_side_blocks_and_distillation_terms_keeps_their_gradients(monkeypatch):
    batch = text_batch()
    model = tiny_mdpd_model(logits_loss_weight=0.0, backbone_task_loss_weight=0.0)
    model.train()
    grads = {}
    for recompute in (True, False):
        if not recompute:
            for module in (distillation, ladder):
                monkeypatch.setattr(module, "recomputed", lambda function, *args: function(*args))
        model.zero_grad()
        torch.manual_seed(0)  # the same dropout and masks in both runs
        model(**batch).loss.backward()
        grads[recompute] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert any("mdpd_distill" in name for name in grads[True]) and any(".blocks." in name for name in grads[True])
    assert grads[True].keys() == grads[False].keys()
    for name in grads[False]:
        torch.testing.assert_close(grads[True][name], grads[False][name], msg=name)


@pytest.mark.parametrize("fading", ["checkpointed", "backprop"])
@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
def test_fading_layers_trains_the_last_layers_norms_and_backward_stops_there(fading):
    model = tiny_mdpd_model(fading_layers=1, fading=fading)
    copies = {n for n, p in model.named_parameters() if "mdpd_copies" in n and p.requires_grad}
    assert copies and all(".layer.3." in n for n in copies)
    entered = []
    layers = model.get_base_model().bert.encoder.layer
    for index, layer in enumerate(layers):
        layer.register_full_backward_pre_hook(lambda module, grad, index=index: entered.append(index))
    model.train()
    model(**text_batch()).loss.backward()
    assert set(entered) == {3}  # no gradient flows below the trained layer
    assert all(p.grad is not None for n, p in model.named_parameters() if n in copies)
    assert type(model.merge_and_unload()).__name__ == "BertForSequenceClassification"


def test_fading_interval_lets_the_norms_learn_every_nth_pass_and_the_backbone_skip_autograd_between():
    model = tiny_mdpd_model(fading_interval=2)
    entered = []
    for index, layer in enumerate(model.get_base_model().bert.encoder.layer):
        layer.register_full_backward_pre_hook(lambda module, grad, index=index: entered.append(index))
    model.train()
    for learning_pass in (True, False, True, False):
        model.zero_grad(set_to_none=True)
        entered.clear()
        model(**text_batch()).loss.backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
        copies = [g for n, g in grads.items() if "mdpd_copies" in n]
        assert entered == ([3, 2, 1, 0] if learning_pass else [])  # held still: backward never enters the backbone
        assert all((g is not None) == learning_pass for g in copies)
        assert all(g is not None for n, g in grads.items() if "mdpd_copies" not in n)  # side, distiller, head learn
    model.eval()
    model.zero_grad(set_to_none=True)
    model(**{k: v for k, v in text_batch().items() if k != "labels"}).logits.sum().backward()  # eval holds nothing still
    assert all(p.grad is not None for n, p in model.named_parameters() if "mdpd_copies" in n and p.requires_grad)


def test_block_local_fading_learns_each_layer_inside_the_forward_and_no_backward_crosses_the_backbone():
    model = tiny_mdpd_model(fading="block_local")
    model.train()
    output = model(**text_batch())
    copies = [p for n, p in model.named_parameters() if "mdpd_copies" in n and p.requires_grad]
    assert len(copies) == 2 * (1 + 2 * 4) and all(p.grad is not None for p in copies)  # learnt during the forward
    assert torch.isfinite(output.mdpd_losses["local"])
    assert all(g is None for g in torch.autograd.grad(output.loss, copies, allow_unused=True))  # the step's loss reaches none
    output.loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if p.requires_grad)  # side, distiller, probes, head
    assert type(model.merge_and_unload()).__name__ == "BertForSequenceClassification"


def test_block_local_fading_refuses_gradient_checkpointing():
    model = tiny_mdpd_model(fading="block_local")
    model.get_base_model().gradient_checkpointing_enable()
    model.train()
    with pytest.raises(RuntimeError, match='fading="block_local" cannot run under gradient checkpointing'):
        model(**text_batch())


def test_head_only_fading_trains_no_backbone_norm():
    model = tiny_mdpd_model(fading="head_only")
    before = {n: p.clone() for n, p in model.named_parameters() if "mdpd_copies" in n}
    train_steps(model, text_batch(), steps=2)
    assert before and all(torch.equal(before[n], p) for n, p in model.named_parameters() if n in before)
    head = [p for n, p in model.named_parameters() if "modules_to_save" in n]
    assert head and all(p.requires_grad for p in head)
