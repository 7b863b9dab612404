"""Kept side networks: named tasks of one frozen encoder, all served from one encoder pass (``SideTaskConfig``)."""

from .config import SideTaskConfig
from .model import SideTaskModel, SideTaskOutput
from .trainer import SideTaskTrainer

__all__ = ["SideTaskConfig", "SideTaskModel", "SideTaskOutput", "SideTaskTrainer"]
