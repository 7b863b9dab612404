"""Every side network of the registry trains beside the frozen backbone, distils, saves, loads and fades."""

import pytest
import torch
import transformers
from peft import PeftModel, get_peft_model

from mdpd_peft import MDPDConfig
from mdpd_peft.side_networks import SIDE_NETWORKS
from conftest import check_train_and_fade, image_batch, text_batch, tiny_text_model, tiny_vit, train_steps, without_dropout

NETWORKS = ["ladder", "unipt", "sherl", "dtl", "dtl+"]
ONLY_TASK = dict(shallow_loss_weight=0.0, deep_loss_weight=0.0, logits_loss_weight=0.0, backbone_task_loss_weight=0.0)


def test_registry_names_every_network():
    assert set(SIDE_NETWORKS) == set(NETWORKS)


@pytest.mark.parametrize("network", NETWORKS)
def test_trains_and_fades_on_text_and_vision(network):
    check_train_and_fade(tiny_text_model(), MDPDConfig(task_type="SEQ_CLS", reduction_factor=4, side_network=network), text_batch())
    vit_config = MDPDConfig(reduction_factor=4, side_network=network, modules_to_save=["classifier"])
    check_train_and_fade(tiny_vit(), vit_config, image_batch())


@pytest.mark.parametrize("network", NETWORKS)
def test_side_task_trains_the_side_network_only(network):
    """The side task's gradient reaches every side parameter and nothing of the backbone: SHERL's and DTL's
    re-run backbone layers run as loaded, so the LayerNorm copies that fading trains get nothing from it.
    Without feature losses the distillation modules do not train (nor count as trainable)."""
    model = get_peft_model(tiny_text_model(), MDPDConfig(task_type="SEQ_CLS", reduction_factor=4, side_network=network, **ONLY_TASK))
    model.train()
    output = model(**text_batch())
    assert set(output.mdpd_losses) == {"task"}
    output.loss.backward()
    side = model.base_model.mdpd_side["default"]
    assert all(p.grad is not None for p in side.parameters())
    assert not any(p.requires_grad for p in model.base_model.mdpd_distill["default"].parameters())  # no feature loss
    backbone = {n: p for n, p in model.named_parameters() if p.requires_grad and "mdpd_side" not in n and "mdpd_distill" not in n}
    assert backbone and all(p.grad is None for p in backbone.values())


@pytest.mark.parametrize("network", NETWORKS)
def test_features_match_the_distilled_layers(network):
    model = get_peft_model(tiny_text_model(), MDPDConfig(task_type="SEQ_CLS", reduction_factor=4, side_network=network))
    side = model.base_model.mdpd_side["default"]
    outputs = []
    side.register_forward_hook(lambda module, args, output: outputs.append(output))
    model.train()
    model(**text_batch())
    assert len(outputs[0].features) == len(side.distilled_layers) > 0
    assert {f.shape for f in outputs[0].features} == {(6, 16, side.feature_width)}


def test_dtl_starts_as_the_backbone():
    """DTL's maps start at zero, so its changed states equal the backbone's outputs: re-running blocks M+1.. with
    the pass's own arguments (padding mask included) reproduces them, with fading's checkpointing on."""
    model = get_peft_model(without_dropout(tiny_text_model()), MDPDConfig(task_type="SEQ_CLS", reduction_factor=4, side_network="dtl"))
    model.train()
    side = model.base_model.mdpd_side["default"]
    assert side.distilled_layers == [2, 3] and side.rerun_layers == {3}
    captured = []
    side.register_forward_hook(lambda module, args, output: captured.append((args[0], output)))
    model(**text_batch())
    states, output = captured[0]
    for layer, feature in zip(side.distilled_layers, output.features):
        torch.testing.assert_close(feature, states.output_of(layer), rtol=0, atol=1e-6)


def test_side_kept_round_trip(tmp_path):
    """Each side network's adapter saves and reloads exactly; the side path predicts the same after the reload."""
    batch = text_batch()
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    for network in ("unipt", "sherl", "dtl+"):
        model = get_peft_model(tiny_text_model(), MDPDConfig(task_type="SEQ_CLS", reduction_factor=4, side_network=network, eval_path="side"))
        train_steps(model, batch)
        model.eval()
        model.save_pretrained(tmp_path / network)
        restored = PeftModel.from_pretrained(tiny_text_model(), tmp_path / network).eval()
        assert restored.peft_config["default"].side_network == network
        with torch.no_grad():
            torch.testing.assert_close(restored(**inputs).logits, model(**inputs).logits, rtol=0, atol=0)


def test_models_whose_stages_widen_need_the_ladder():
    swin = transformers.SwinForImageClassification(
        transformers.SwinConfig(image_size=16, patch_size=2, num_channels=1, embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=2, num_labels=3)
    )
    for network in ("unipt", "sherl", "dtl"):
        with pytest.raises(ValueError, match=r"MDPDConfig.side_network=.* must be 'ladder' for a model whose stages change width"):
            get_peft_model(swin, MDPDConfig(side_network=network, side_init="random", modules_to_save=["classifier"]))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(side_network="lora"), r"MDPDConfig.side_network='lora' is invalid: side_network must be one of \('ladder'"),
        (dict(side_network="dtl", side_layers=[1]), r"side_layers must be None with side_network='dtl'"),
        (dict(dtl_rank=0), r"dtl_rank must be an integer >= 1"),
        (dict(dtl_conv_kernel=4), r"dtl_conv_kernel must be an odd integer >= 1"),
    ],
)
def test_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MDPDConfig(**kwargs)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(side_network="sherl", side_layers=[0, 3]), r"side_layers must be indices below 3 with side_network='sherl'"),
        (dict(side_network="dtl", dtl_inject_from=4), r"MDPDConfig.dtl_inject_from=4 is invalid: .* \[0, 3\]"),
    ],
)
def test_model_dependent_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        get_peft_model(tiny_text_model(), MDPDConfig(task_type="SEQ_CLS", reduction_factor=4, **kwargs))
