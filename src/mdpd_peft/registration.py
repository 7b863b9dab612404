"""Registers ``"mdpd"``, ``"dtl"`` and ``"side_task"`` as PEFT methods (an import side effect of ``mdpd_peft``)."""

import peft.mapping as peft_mapping
from peft.utils import PeftType, register_peft_method

from .config import MDPDConfig
from .dtl import DTLConfig, DTLModel
from .enum_extension import add_str_enum_member
from .model import MDPDModel
from .side_tasks import SideTaskConfig, SideTaskModel

METHODS = {  # PEFT name -> (PeftType member, config class, tuner class)
    "mdpd": (add_str_enum_member(PeftType, "MDPD"), MDPDConfig, MDPDModel),
    "dtl": (add_str_enum_member(PeftType, "DTL"), DTLConfig, DTLModel),
    "side_task": (add_str_enum_member(PeftType, "SIDE_TASK"), SideTaskConfig, SideTaskModel),
}


def register() -> None:
    """Make ``get_peft_model``, ``PeftConfig.from_pretrained`` and ``PeftModel.from_pretrained`` know MDPD, DTL and side tasks.

    Safe to call more than once: a second import, or an ``importlib.reload`` that created new class
    objects, replaces the earlier entries instead of tripping PEFT's duplicate-name check.
    """
    for name, (peft_type, config_cls, model_cls) in METHODS.items():
        if peft_mapping.PEFT_TYPE_TO_CONFIG_MAPPING.get(peft_type) is config_cls:
            continue
        for mapping in (
            peft_mapping.PEFT_TYPE_TO_CONFIG_MAPPING,
            peft_mapping.PEFT_TYPE_TO_TUNER_MAPPING,
            peft_mapping.PEFT_TYPE_TO_PREFIX_MAPPING,
        ):
            mapping.pop(peft_type, None)
        register_peft_method(name=name, config_cls=config_cls, model_cls=model_cls, prefix=model_cls.prefix)
