"""Registers ``"mdpd"`` as a PEFT method (an import side effect of ``mdpd_peft``)."""

import peft.mapping as peft_mapping
from peft.utils import PeftType, register_peft_method

from .config import MDPDConfig
from .enum_extension import add_str_enum_member
from .model import MDPDModel

MDPD_PEFT_TYPE = add_str_enum_member(PeftType, "MDPD")


def register() -> None:
    """Make ``get_peft_model``, ``PeftConfig.from_pretrained`` and ``PeftModel.from_pretrained`` know MDPD.

    Safe to call more than once: a second import, or an ``importlib.reload`` that created new class
    objects, replaces the earlier entries instead of tripping PEFT's duplicate-name check.
    """
    if peft_mapping.PEFT_TYPE_TO_CONFIG_MAPPING.get(MDPD_PEFT_TYPE) is MDPDConfig:
        return
    for mapping in (
        peft_mapping.PEFT_TYPE_TO_CONFIG_MAPPING,
        peft_mapping.PEFT_TYPE_TO_TUNER_MAPPING,
        peft_mapping.PEFT_TYPE_TO_PREFIX_MAPPING,
    ):
        mapping.pop(MDPD_PEFT_TYPE, None)
    register_peft_method(name="mdpd", config_cls=MDPDConfig, model_cls=MDPDModel, prefix=MDPDModel.prefix)
