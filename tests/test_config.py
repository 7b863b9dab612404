import pytest
from peft import get_peft_model

from mdpd_peft import MDPDConfig
from conftest import tiny_text_model


@pytest.mark.parametrize(
    "kwargs, field, allowed",
    [
        ({"reduction_factor": 0}, "reduction_factor", "integer >= 1"),
        ({"reduction_factor": 2.5}, "reduction_factor", "integer >= 1"),
        ({"mask_ratio": 1.0}, "mask_ratio", "[0, 1)"),
        ({"mask_ratio": -0.1}, "mask_ratio", "[0, 1)"),
        ({"aligner_rank": 0}, "aligner_rank", "integer >= 1"),
        ({"deep_loss_weight": -1.0}, "deep_loss_weight", ">= 0"),
        ({"gate_temperature": 0.0}, "gate_temperature", "> 0"),
        ({"side_init": "zeros"}, "side_init", "'auto', 'pruned', 'random'"),
        ({"eval_path": "both"}, "eval_path", "'backbone', 'side'"),
        ({"norm_position": "middle"}, "norm_position", "'pre', 'post'"),
        ({"fading": "later"}, "fading", "'backprop', 'checkpointed', 'head_only', 'block_local'"),
        ({"fading_layers": 0}, "fading_layers", "integer >= 1"),
        ({"fading_layers": 5}, "fading_layers", "[1, 4] (the model has 4 layers)"),
        ({"fading_layers": 1, "target_modules": ["LayerNorm"]}, "fading_layers", "None when target_modules is given"),
        ({"fading_interval": 0}, "fading_interval", "integer >= 1"),
        ({"fading_interval": 2, "fading": "head_only"}, "fading_interval", 'with fading="head_only"'),
        ({"side_head_dim": 0}, "side_head_dim", "None or an integer >= 1"),
        ({"side_head_dim": 4.0}, "side_head_dim", "None or an integer >= 1"),
        ({"side_layers": []}, "side_layers", "non-empty list"),
        ({"side_layers": [4]}, "side_layers", "[0, 3] (the model has 4 layers)"),
        ({"side_layers": [-1]}, "side_layers", "[0, 3]"),
        ({"deep_layers_start": 5}, "deep_layers_start", "[0, 4]"),
        ({"reduction_factor": 65}, "reduction_factor", "[1, 64]"),
        ({"reduction_factor": 8, "aligner_rank": 9}, "aligner_rank", "[1, 8] (the side width)"),
        ({"layers_path": "bert.pooler"}, "layers_path", "nn.ModuleList"),
        ({"layers_path": "no.such.module"}, "layers_path", "nn.ModuleList"),
    ],
)
def test_bad_values_fail_in_get_peft_model_naming_field_value_and_allowed(kwargs, field, allowed):
    with pytest.raises(ValueError) as error:
        get_peft_model(tiny_text_model(), MDPDConfig(task_type="SEQ_CLS", **kwargs))
    message = str(error.value)
    value = kwargs[field]
    assert f"MDPDConfig.{field}={value!r}" in message
    assert allowed in message


def test_unmappable_model_names_the_field_to_set():
    from torch import nn
    from transformers import PretrainedConfig, PreTrainedModel

    class Flat(PreTrainedModel):
        config_class = PretrainedConfig

        def __init__(self, config):
            super().__init__(config)
            self.proj = nn.Linear(8, 8)

        def forward(self, x):
            return self.proj(x)

    with pytest.raises(ValueError, match="Set MDPDConfig.layers_path"):
        get_peft_model(Flat(PretrainedConfig(num_hidden_layers=2)), MDPDConfig())


def test_defaults_follow_the_paper():
    config = MDPDConfig()
    assert (config.reduction_factor, config.mask_ratio) == (8, 0.5)
    assert (config.shallow_loss_weight, config.deep_loss_weight, config.logits_loss_weight) == (4e-5, 6e-5, 1e-4)
    assert (config.side_init, config.eval_path, config.side_layers, config.target_modules) == ("auto", "backbone", None, None)
