"""The model card (README.md) of a side-task bundle: its tasks, their labels and measured metrics, and how to load them."""

from __future__ import annotations

from huggingface_hub import ModelCard, ModelCardData

from ..model_card import hub_id_or_none
from ..side_networks import SIDE_NETWORKS
from .config import SideTaskConfig
from .model import SideTaskModel

TAGS = ["side-task", "mdpd"]
SHOWN_LABELS = 20  # a task with more labels lists the first ones and the count


def labels_line(config: SideTaskConfig) -> str:
    if config.problem_type == "regression":
        return "one score"
    names = [f"`{config.id2label[index]}`" for index in range(config.num_labels)]
    more = f", … ({config.num_labels} in all)" if len(names) > SHOWN_LABELS else ""
    return ", ".join(names[:SHOWN_LABELS]) + more


def metrics_line(metrics: dict[str, float] | None) -> str:
    if not metrics:
        return "not measured"
    return ", ".join(f"{name} {value:.4f}" if isinstance(value, float) else f"{name} {value}" for name, value in metrics.items())


def task_section(tuner: SideTaskModel, name: str, metrics: dict[str, float] | None) -> list[str]:
    config: SideTaskConfig = tuner.peft_config[name]
    task = tuner.kept_tasks[name]
    parameters = sum(parameter.numel() for parameter in task.parameters())
    return [
        f"### `{name}`",
        "",
        f"- problem type: {config.problem_type}",
        f"- labels: {labels_line(config)}",
        f"- side network: `{config.side_network}` ({SIDE_NETWORKS[config.side_network].title}), reduction factor "
        f"r = {config.reduction_factor} (width {task.side.final_width}), head input `{config.head_input}`",
        f"- trainable parameters: {parameters:,}",
        f"- measured: {metrics_line(metrics)}",
        "",
    ]


def side_task_card(
    tuner: SideTaskModel, metrics: dict[str, dict[str, float]] | None = None, model_name: str | None = None, with_processor: bool = False
) -> ModelCard:
    """A card whose YAML says ``library_name: peft`` and whose body lists every task of ``tuner`` with its
    ``metrics`` (task -> metric -> value; a task without any says "not measured") and how to load the tasks
    (``with_processor``: the bundle holds the tokenizer or image processor, so the pipeline loads from it alone)."""
    metrics = metrics or {}
    base_id = hub_id_or_none(getattr(getattr(tuner.model, "config", None), "_name_or_path", None))
    metric_names = list(dict.fromkeys(metric for task_metrics in metrics.values() for metric in task_metrics))
    data = ModelCardData(library_name="peft", base_model=base_id, tags=TAGS, metrics=metric_names or None)
    encoder_id = f'"{base_id}"' if base_id else '"..."  # the encoder the tasks were trained on, with the same weights'
    pipeline = (
        'SideTaskPipeline.from_pretrained(AutoModel.from_pretrained(encoder_id), "<this repository>")  # inputs in, labels and scores per task out'
        if with_processor
        else "SideTaskPipeline(model, processor)  # processor: the encoder's tokenizer or image processor; inputs in, labels and scores per task out"
    )
    one_task = next((name for name in tuner.tasks if name != "default"), None)
    subfolder = f', subfolder="{one_task}", adapter_name="{one_task}"' if one_task else ""
    lines = [
        f"# {model_name or 'Side-task bundle'}",
        "",
        f"{len(tuner.tasks)} task(s) kept as side networks (mdpd-peft's `SideTaskConfig`) of one frozen encoder"
        f"{f' (`{base_id}`)' if base_id else ''}, each saved as an ordinary PEFT adapter. The encoder is never changed: "
        "every task reads the states of one encoder pass, so serving all of them costs one forward pass of the encoder "
        "plus each task's small side network, not one encoder pass per task. Adding or removing a task leaves the "
        "other tasks' outputs unchanged.",
        "",
        "## Tasks",
        "",
        *(line for name in tuner.tasks for line in task_section(tuner, name, metrics.get(name))),
        "## Use",
        "",
        "```python",
        "from peft import PeftModel",
        "from transformers import AutoModel",
        "from mdpd_peft import SideTaskPipeline, load_side_tasks",
        "",
        f"encoder_id = {encoder_id}",
        'model = load_side_tasks(AutoModel.from_pretrained(encoder_id), "<this repository>")  # every task, all active',
        f"pipe = {pipeline}",
        f'one = PeftModel.from_pretrained(AutoModel.from_pretrained(encoder_id), "<this repository>"{subfolder})  # a task alone',
        "```",
    ]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n")
