"""Kept side networks: named tasks of one frozen encoder, all served from one encoder pass (``SideTaskConfig``)."""

from .bundle import load_side_tasks, push_side_tasks_to_hub, save_side_tasks
from .config import SideTaskConfig
from .model import SideTaskModel, SideTaskOutput
from .onnx_export import export_onnx
from .onnx_pipeline import OnnxSideTaskPipeline
from .pipeline import SideTaskPipeline
from .trainer import SideTaskTrainer

__all__ = ["OnnxSideTaskPipeline", "SideTaskConfig", "SideTaskModel", "SideTaskOutput", "SideTaskPipeline", "SideTaskTrainer", "export_onnx", "load_side_tasks", "push_side_tasks_to_hub", "save_side_tasks"]
