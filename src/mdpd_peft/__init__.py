"""mdpd-peft: Masked Dual Path Distillation for Hugging Face PEFT.

``import mdpd_peft`` registers the ``"mdpd"`` method (and ``"dtl"``, DTL's compact side network kept at inference) with PEFT, so ``get_peft_model(model, MDPDConfig(...))``,
``PeftConfig.from_pretrained`` and ``PeftModel.from_pretrained`` work on MDPD adapters; ``MDPDTrainer``
trains them, evaluates both paths and saves or pushes the faded model.
"""

from .config import MDPDConfig
from .dtl import DTLConfig, DTLModel
from .gathering import gathered_faded_model
from .layer import MDPDLayer
from .model import MDPDModel
from .registration import register
from .side_tasks import (
    OnnxSideTaskPipeline,
    SideTaskConfig,
    SideTaskModel,
    SideTaskOutput,
    SideTaskPipeline,
    SideTaskTrainer,
    export_onnx,
    load_side_tasks,
    push_side_tasks_to_hub,
    save_side_tasks,
)
from .state_cache import StateCache, StateCacheKey, StateCacheTooLargeError, StaleStateCacheError, build_state_cache
from .trainer import MDPDTrainer

register()

__all__ = ["DTLConfig", "DTLModel", "MDPDConfig", "MDPDLayer", "MDPDModel", "MDPDTrainer", "StaleStateCacheError", "StateCache", "StateCacheKey", "StateCacheTooLargeError", "build_state_cache", "export_onnx", "gathered_faded_model", "register", "OnnxSideTaskPipeline", "SideTaskConfig", "SideTaskModel", "SideTaskOutput", "SideTaskPipeline", "SideTaskTrainer", "load_side_tasks", "push_side_tasks_to_hub", "save_side_tasks"]
__version__ = "0.1.0"
