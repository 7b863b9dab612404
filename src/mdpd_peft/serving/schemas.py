"""The HTTP bodies of the side-task server: what ``/v1/classify`` takes and returns, what ``/v1/tasks`` returns."""

from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

from ..side_tasks.pipeline_base import DEFAULT_THRESHOLD


class ClassifyRequest(BaseModel):
    """Inputs to predict, the tasks to predict them for and the options of the predictions."""

    model_config = ConfigDict(extra="forbid")  # a misspelt field fails, naming it, instead of being ignored

    inputs: list[str] = Field(
        min_length=1,
        description="Texts, or for a bundle of an image encoder, images as base64 strings (PNG, JPEG, ...; a "
        "'data:image/...;base64,' prefix is accepted). At most the server's max_inputs (GET /v1/tasks).",
    )
    tasks: Optional[list[str]] = Field(None, min_length=1, description="The tasks to predict; default: every task of the bundle.")
    top_k: Optional[int] = Field(None, ge=1, description="Single-label tasks: the k best labels as a list; default: the best label alone.")
    threshold: float = Field(DEFAULT_THRESHOLD, ge=0.0, le=1.0, description="Multi-label tasks: the sigmoid score a label needs.")


class _Prediction(BaseModel):
    model_config = ConfigDict(extra="forbid")  # keeps the union of prediction formats below unambiguous


class LabelScore(_Prediction):
    """A label of a classification task and its probability (softmax for single-label, sigmoid for multi-label)."""

    label: str
    score: float


class Score(_Prediction):
    """The value predicted by a regression task."""

    score: float


class TokenLabel(_Prediction):
    """The best label of one token (token classification; special tokens are skipped)."""

    token: str
    label: str
    score: float


# single-label: LabelScore (list[LabelScore] with top_k); multi-label: list[LabelScore]; regression: Score;
# token classification: list[TokenLabel]
Prediction = Union[LabelScore, Score, list[TokenLabel], list[LabelScore]]


class ClassifyResponse(BaseModel):
    """Each input's predictions, task -> prediction, in the order of the request's inputs."""

    predictions: list[dict[str, Prediction]] = Field(description="One {task: prediction} per input.")
    truncated: list[int] = Field(
        description="The indices of the texts longer than the encoder's max_length tokens: they were cut to it and "
        "predicted from their beginning."
    )


class TaskInfo(BaseModel):
    name: str
    problem_type: Literal["single_label_classification", "multi_label_classification", "regression", "token_classification"]
    labels: Optional[list[str]] = Field(description="Label names in class-index order; null for regression.")


class TasksResponse(BaseModel):
    """What the server predicts and the limits of a request."""

    tasks: list[TaskInfo]
    input_type: Literal["text", "image"]
    max_inputs: int = Field(description="The most inputs one request may hold.")
    max_length: Optional[int] = Field(description="Texts: the tokens the encoder reads (special tokens counted); longer ones are truncated.")


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    tasks: int = Field(description="How many tasks the loaded bundle serves.")
