"""Kept side networks: named tasks of one frozen encoder, all served from one encoder pass (``SideTaskConfig``)."""

from .bundle import load_side_tasks, push_side_tasks_to_hub, save_side_tasks
from .config import SideTaskConfig
from .model import SideTaskModel, SideTaskOutput
from .pipeline import SideTaskPipeline
from .trainer import SideTaskTrainer

__all__ = ["SideTaskConfig", "SideTaskModel", "SideTaskOutput", "SideTaskPipeline", "SideTaskTrainer", "load_side_tasks", "push_side_tasks_to_hub", "save_side_tasks"]
