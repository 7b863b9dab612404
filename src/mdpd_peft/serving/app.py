"""The side-task server: a FastAPI app served by one Ray Serve deployment that holds the whole bundle.

One deployment, not one per task: Ray Serve's model multiplexing would split a batch by model id, and the point of
a bundle is that every task reads the same encoder pass. Requests asking for different tasks, ``top_k`` or
``threshold`` are batched together (``@serve.batch``): each batch runs the union of its tasks in one pass, and each
request gets its own tasks back, post-processed with its own options (``SideTaskPipeline.predict_each``).
"""

# No `from __future__ import annotations`: FastAPI reads the routes' annotations (the request body's model).
import asyncio
from typing import Any, Callable

import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve

from ..side_tasks import SideTaskPipeline
from .inputs import BadRequest, checked_count, checked_tasks, decoded_inputs
from .schemas import ClassifyRequest, ClassifyResponse, Health, TasksResponse
from .settings import ServerSettings

BACKENDS = ("torch", "onnx")

api = FastAPI(
    title="mdpd-peft side tasks",
    description="Every task of a side-task bundle behind one endpoint: one encoder pass per batch serves them all.",
)


@api.exception_handler(BadRequest)
async def bad_request(request: Request, error: BadRequest) -> JSONResponse:
    """422 with FastAPI's validation-error body: ``{"detail": [{"loc": [...], "msg": ..., "type": ...}]}``."""
    return JSONResponse(status_code=422, content={"detail": error.detail()})


@serve.deployment
@serve.ingress(api)
class SideTaskServer:
    """A replica: the bundle's pipeline, loaded once, and the HTTP routes over it.

    Args:
        load_pipeline: Called once in the replica with the batch size (``settings.max_batch_size``); returns the
            pipeline (``SideTaskPipeline`` or one with its interface: ``tasks``, ``configs``, ``texts``,
            ``max_length``, ``predict_each``, ``truncated``). A picklable callable: Ray ships it to the replica.
        settings: Batching and limits.
    """

    def __init__(self, load_pipeline: Callable[[int], Any], settings: ServerSettings):
        torch.set_num_threads(max(1, int(settings.num_cpus)))
        self.settings = settings
        self.pipeline = load_pipeline(settings.max_batch_size)
        self.predict.set_max_batch_size(settings.max_batch_size)
        self.predict.set_batch_wait_timeout_s(settings.batch_wait_timeout_s)

    @api.get("/health", response_model=Health)
    async def health(self) -> dict:
        """200 once the bundle is loaded (Ray Serve routes no request to a replica before that)."""
        return {"tasks": len(self.pipeline.tasks)}

    @api.get("/v1/tasks", response_model=TasksResponse)
    async def tasks(self) -> dict:
        """The bundle's tasks with their labels and problem types, and the limits of a request."""
        tasks = []
        for name in self.pipeline.tasks:
            config = self.pipeline.configs[name]
            labels = None if config.problem_type == "regression" else [config.id2label[i] for i in range(config.num_labels)]
            tasks.append({"name": name, "problem_type": config.problem_type, "labels": labels})
        return {
            "tasks": tasks,
            "input_type": "text" if self.pipeline.texts else "image",
            "max_inputs": self.settings.max_inputs,
            "max_length": self.pipeline.max_length,
        }

    @api.post("/v1/classify", response_model=ClassifyResponse)
    async def classify(self, request: ClassifyRequest) -> dict:
        """Predict the request's tasks (default: all) for each of its inputs."""
        tasks = checked_tasks(request.tasks, self.pipeline.tasks)
        checked_count(request.inputs, self.settings.max_inputs)
        items = decoded_inputs(request.inputs, self.pipeline.texts)
        options = {"tasks": tasks, "top_k": request.top_k, "threshold": request.threshold}
        predictions = await asyncio.gather(*(self.predict((item, options)) for item in items))
        return {"predictions": predictions, "truncated": self.pipeline.truncated(items)}

    @serve.batch(max_batch_size=ServerSettings.max_batch_size, batch_wait_timeout_s=ServerSettings.batch_wait_timeout_s)
    async def predict(self, queries: list[tuple[Any, dict]]) -> list[dict]:
        """(input, its request's options) of concurrent requests -> one pass; in a worker thread, so that requests
        keep arriving, and forming the next batch, while it runs."""
        items, options = zip(*queries)
        return await asyncio.to_thread(self.pipeline.predict_each, list(items), list(options))


def load_pipeline(bundle: str, encoder: str | None, backend: str, batch_size: int):
    """The pipeline of a bundle, loaded in the replica. ``backend="torch"``: ``bundle`` is a ``save_side_tasks``
    folder (or Hub id) and ``encoder`` the encoder's path or Hub id; ``"onnx"``: ``bundle`` is an ``export_onnx``
    folder, which holds the encoder."""
    check_backend(backend, encoder)
    if backend == "onnx":
        return SideTaskPipeline.from_onnx(bundle, batch_size=batch_size)
    from transformers import AutoModel

    return SideTaskPipeline.from_pretrained(AutoModel.from_pretrained(encoder), bundle, batch_size=batch_size)


def check_backend(backend: str, encoder: str | None) -> None:
    """Fail before anything starts where the backend cannot serve: an unknown one, or the torch backend without its
    encoder."""
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}: expected one of {BACKENDS}.")
    if backend == "torch" and not encoder:
        raise ValueError("backend='torch' needs the encoder the bundle's tasks were trained on (--encoder PATH_OR_ID).")


def build_app(load_pipeline: Callable[[int], Any], settings: ServerSettings | None = None) -> serve.Application:
    """The Ray Serve application of one bundle: ``serve.run(build_app(...))`` deploys it.

    Args:
        load_pipeline: See ``SideTaskServer``; ``functools.partial(load_pipeline, bundle, encoder, backend)`` for a
            bundle on disk.
        settings: Batching and limits; ``None``: ``ServerSettings()``'s defaults.
    """
    settings = settings if settings is not None else ServerSettings()
    return SideTaskServer.options(
        num_replicas=settings.replicas,
        max_ongoing_requests=settings.max_ongoing_requests,
        max_queued_requests=settings.max_queued_requests,
        ray_actor_options={"num_cpus": settings.num_cpus},
    ).bind(load_pipeline, settings)
