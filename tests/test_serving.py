"""The side-task server on Ray Serve, end to end over HTTP on the loopback: a tiny bundle of every problem type on a
tiny random BERT (with MiniLM's real tokenizer) and a tiny ViT bundle, served by one local Ray instance for the
module; the ``mdpd-peft serve`` command in a subprocess, stopped by SIGINT with nothing left running."""

import base64
import io
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

pytest.importorskip("ray.serve")
httpx = pytest.importorskip("httpx")

from PIL import Image  # noqa: E402
from peft import get_peft_model  # noqa: E402
from ray import serve  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from mdpd_peft import SideTaskConfig, SideTaskPipeline, save_side_tasks  # noqa: E402
from mdpd_peft.cli import main  # noqa: E402
from mdpd_peft.serving.app import build_app, load_pipeline  # noqa: E402
from mdpd_peft.serving.settings import ServerSettings  # noqa: E402
from test_side_task_bundle import TASKS, TEXTS, assert_same_predictions, tasks_model, tiny_encoder  # noqa: E402

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "60")  # as mdpd-peft serve sets it: two instances start at once here
ROOT = Path(__file__).parents[1]
# The text app: small limits, so that 8 concurrent requests overload it (2 run, 2 queue; the proxy counts a request
# as queued until a replica takes it, so 2 requests sent together need a queue of 2); a batch of 4 inputs fills at
# once, and an input waits up to a second for others (two requests sent together share a pass).
TEXT_SETTINGS = ServerSettings(max_batch_size=4, batch_wait_timeout_s=1.0, max_inputs=4, max_ongoing_requests=2, max_queued_requests=2, num_cpus=0)
IMAGE_SETTINGS = ServerSettings(max_batch_size=4, batch_wait_timeout_s=0.01, num_cpus=0)
ANIMALS = {0: "cat", 1: "dog", 2: "bird"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RecordingLoader:
    """Loads the bundle in the replica as the command does, and records each encoder pass in a file (one line: the
    inputs it ran); each pass first sleeps the seconds written in ``delay_file``, if any (the overload test)."""

    def __init__(self, bundle: Path, encoder: Path, passes_file: Path, delay_file: Path):
        self.bundle, self.encoder, self.passes_file, self.delay_file = bundle, encoder, passes_file, delay_file

    def __call__(self, batch_size: int):
        pipeline = load_pipeline(str(self.bundle), str(self.encoder), "torch", batch_size)
        pipeline.model.base_model.model.embeddings.register_forward_hook(self.record)
        return pipeline

    def record(self, module, args, output):
        if self.delay_file.exists():
            time.sleep(float(self.delay_file.read_text()))
        with self.passes_file.open("a") as file:
            file.write(f"{output.shape[0]}\n")


def encoder_passes(server) -> list[int]:
    return [int(line) for line in server["passes"].read_text().split()] if server["passes"].exists() else []


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, minilm_path):
    """A text bundle of all four problem types and an image bundle, each saved with its processor and encoder."""
    folder = tmp_path_factory.mktemp("serving")
    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    tiny_encoder(vocab_size=len(tokenizer)).save_pretrained(folder / "text-encoder")
    save_side_tasks(tasks_model(list(TASKS), tiny_encoder(vocab_size=len(tokenizer))), folder / "text-bundle", processor=tokenizer)
    torch.manual_seed(0)
    config = transformers.ViTConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
    vit = transformers.ViTModel(config).eval()  # with its pooler: what AutoModel loads
    vit.save_pretrained(folder / "image-encoder")
    model = get_peft_model(vit, SideTaskConfig(reduction_factor=4, pooling="first", id2label=ANIMALS), adapter_name="animal")
    save_side_tasks(model, folder / "image-bundle", processor=transformers.ViTImageProcessor(size={"height": 16, "width": 16}))
    return folder


@pytest.fixture(scope="module")
def command(bundles):
    """``mdpd-peft serve`` of the text bundle in a subprocess on a free port, started with the module's server (which
    requests it) so that the two starts overlap; the last test stops it."""
    port = free_port()
    arguments = ["serve", str(bundles / "text-bundle"), "--encoder", str(bundles / "text-encoder"), "--port", str(port), "--num-cpus", "0"]
    process = subprocess.Popen(
        [sys.executable, "-m", "mdpd_peft.cli", *arguments], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")}
    )
    yield process, port
    if process.poll() is None:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def server(bundles, command):
    """One local Ray instance for the module, serving the text bundle at /text and the image bundle at /image."""
    import ray
    from ray.job_config import JobConfig

    port = free_port()
    ray.init(address="local", num_cpus=2, include_dashboard=False, job_config=JobConfig(code_search_path=[str(Path(__file__).parent)]))
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        passes, delay = bundles / "passes.txt", bundles / "delay.txt"
        text = build_app(RecordingLoader(bundles / "text-bundle", bundles / "text-encoder", passes, delay), TEXT_SETTINGS)
        image = build_app(partial(load_pipeline, str(bundles / "image-bundle"), str(bundles / "image-encoder"), "torch"), IMAGE_SETTINGS)
        serve.run_many([serve.RunTarget(text, name="text", route_prefix="/text"), serve.RunTarget(image, name="image", route_prefix="/image")])
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            yield {"client": client, "passes": passes, "delay": delay, "port": port}
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="module")
def reference(bundles):
    """The bundle's pipeline in this process: what the server must answer."""
    return SideTaskPipeline.from_pretrained(transformers.AutoModel.from_pretrained(bundles / "text-encoder"), bundles / "text-bundle")


def classify(server, body: dict, app: str = "text") -> httpx.Response:
    return server["client"].post(f"/{app}/v1/classify", json=body)


def concurrently(server, bodies: list[dict]) -> list[httpx.Response]:
    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(partial(classify, server), bodies))


def png_base64(seed: int) -> str:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


# ------------------------------------------------------------------------------------------------ serving


def test_health_tasks_and_docs(server):
    client = server["client"]
    assert client.get("/text/health").json() == {"status": "ok", "tasks": 4}
    tasks = client.get("/text/v1/tasks").json()
    assert tasks["input_type"] == "text" and tasks["max_inputs"] == 4 and tasks["max_length"] == 64
    assert {task["name"]: (task["problem_type"], task["labels"]) for task in tasks["tasks"]} == {
        "sentiment": ("single_label_classification", ["neg", "pos"]),
        "topic": ("multi_label_classification", ["sport", "politics", "science"]),
        "stars": ("regression", None),
        "ner": ("token_classification", ["O", "PER", "LOC"]),
    }
    docs = client.get("/text/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    schema = client.get("/text/openapi.json").json()
    assert {"/v1/classify", "/v1/tasks", "/health"} <= set(schema["paths"])
    assert {"inputs", "tasks", "top_k", "threshold"} == set(schema["components"]["schemas"]["ClassifyRequest"]["properties"])


def test_classify_answers_what_the_pipeline_predicts(server, reference):
    response = classify(server, {"inputs": TEXTS, "threshold": 0.0})
    assert response.status_code == 200 and response.json()["truncated"] == []
    assert_same_predictions(response.json()["predictions"], reference(TEXTS, threshold=0.0))
    best_two = classify(server, {"inputs": TEXTS[:1], "tasks": ["sentiment"], "top_k": 2}).json()["predictions"]
    assert_same_predictions(best_two, reference(TEXTS[:1], top_k=2, tasks=["sentiment"]))


def test_requests_for_different_tasks_and_options_share_one_encoder_pass(server, reference):
    before = len(encoder_passes(server))
    first = {"inputs": TEXTS[:2], "tasks": ["sentiment"], "top_k": 2}
    second = {"inputs": TEXTS[1:], "tasks": ["topic", "stars"], "threshold": 0.0}
    answers = concurrently(server, [first, second])
    assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
    assert encoder_passes(server)[before:] == [4]  # both requests' inputs, one pass, the union of their tasks
    for body, answer in zip([first, second], answers):
        assert answer.status_code == 200
        options = {key: value for key, value in body.items() if key != "inputs"}
        assert_same_predictions(answer.json()["predictions"], reference(body["inputs"], **options))


def test_a_text_longer_than_the_encoder_reads_is_truncated_and_flagged(server):
    response = classify(server, {"inputs": ["Short.", "word " * 200], "tasks": ["ner"]})
    assert response.status_code == 200 and response.json()["truncated"] == [1]
    assert len(response.json()["predictions"][1]["ner"]) == 64 - 2  # the encoder's positions less [CLS] and [SEP]


def test_images_as_base64_and_data_urls(server, bundles):
    images = [png_base64(0), "data:image/png;base64," + png_base64(1)]
    response = classify(server, {"inputs": images, "top_k": 3}, app="image")
    assert response.status_code == 200 and response.json()["truncated"] == []
    vit = transformers.AutoModel.from_pretrained(bundles / "image-encoder")
    decoded = [Image.open(io.BytesIO(base64.b64decode(png_base64(seed)))).convert("RGB") for seed in (0, 1)]
    assert_same_predictions(response.json()["predictions"], SideTaskPipeline.from_pretrained(vit, bundles / "image-bundle")(decoded, top_k=3))


# --------------------------------------------------------------------------------------------- bad requests


@pytest.mark.parametrize(
    "app, body, location, message",
    [
        ("text", {"inputs": ["a"], "tasks": ["sentiment", "x"]}, ["body", "tasks"], r"unknown task(s) ['x']: this server predicts the tasks ['ner', 'sentiment', 'stars', 'topic']"),
        ("text", {"inputs": []}, ["body", "inputs"], "at least 1 item"),
        ("text", {"inputs": ["a"] * 5}, ["body", "inputs"], "5 inputs: a request holds at most 4"),
        ("text", {"inputs": ["a", 3]}, ["body", "inputs", 1], "valid string"),
        ("text", {"inputs": ["a"], "top_k": 0}, ["body", "top_k"], "greater than or equal to 1"),
        ("text", {"inputs": ["a"], "treshold": 0.2}, ["body", "treshold"], "Extra inputs are not permitted"),
        ("image", {"inputs": [png_base64(0), "bm90IGFuIGltYWdl"]}, ["body", "inputs", 1], "inputs[1] is no base64-encoded image"),
    ],
    ids=["unknown-task", "no-inputs", "too-many-inputs", "not-a-string", "top-k-0", "unknown-field", "not-an-image"],
)
def test_bad_requests_get_a_422_naming_the_field(server, app, body, location, message):
    response = classify(server, body, app)
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == location and message in error["msg"]


def test_overload_gets_503_and_the_replica_keeps_serving(server):
    server["delay"].write_text("1.0")  # each pass now takes a second: 2 requests run, 2 queue, the rest are refused
    try:
        answers = concurrently(server, [{"inputs": [TEXTS[i % len(TEXTS)]]} for i in range(8)])
    finally:
        server["delay"].unlink()
    codes = sorted(answer.status_code for answer in answers)
    assert set(codes) == {200, 503} and codes.count(200) >= 2, codes
    assert classify(server, {"inputs": TEXTS[:1]}).status_code == 200
    assert server["client"].get("/text/health").status_code == 200


# ------------------------------------------------------------------------------------------------ command


def test_command_help_and_import_without_ray():
    """``import mdpd_peft`` and ``mdpd-peft serve --help`` import neither Ray nor FastAPI; the console script
    points at ``mdpd_peft.cli:main``."""
    script = (
        "import sys, mdpd_peft; from mdpd_peft.cli import main\n"
        "assert not {'ray', 'fastapi'} & set(sys.modules), 'imported at import time'\n"
        "try:\n    main(['serve', '--help'])\nexcept SystemExit as exit:\n    assert exit.code == 0\n"
        "assert not {'ray', 'fastapi'} & set(sys.modules), 'imported by --help'\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert result.returncode == 0, result.stderr
    for option in ("--encoder", "--host", "--port", "--backend", "--replicas", "--address", "--max-batch-size", "--batch-wait-timeout-s", "--max-inputs", "--max-queued-requests"):
        assert option in result.stdout, option
    scripts = (ROOT / "pyproject.toml").read_text().split("[project.scripts]")[1].split("[")[0]
    assert scripts.strip() == 'mdpd-peft = "mdpd_peft.cli:main"'


def test_command_refuses_bad_arguments_before_starting_ray(bundles, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["serve", str(bundles / "text-bundle")])  # no --encoder
    assert "needs the encoder the bundle's tasks were trained on (--encoder PATH_OR_ID)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["serve", str(tmp_path), "--encoder", str(bundles / "text-encoder")])
    assert "no side-task bundle" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["serve", str(bundles / "text-bundle"), "--encoder", str(bundles / "text-encoder"), "--max-batch-size", "0"])
    assert "max_batch_size=0 is invalid" in capsys.readouterr().err


def test_command_serves_until_sigint_and_leaves_no_ray_process(command, bundles):
    import psutil

    process, port = command
    deadline = time.monotonic() + 180
    while True:
        assert process.poll() is None and time.monotonic() < deadline, process.stdout.read() if process.poll() is not None else "no /health in 180 s"
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200:
                break
        except httpx.TransportError:
            pass
        time.sleep(1)
    response = httpx.post(f"http://127.0.0.1:{port}/v1/classify", json={"inputs": TEXTS, "tasks": ["sentiment"]}, timeout=60)
    assert response.status_code == 200 and len(response.json()["predictions"]) == len(TEXTS)
    started = psutil.Process(process.pid).children(recursive=True)  # gcs_server, raylet, ray::* workers, ...
    assert {"raylet", "gcs_server"} <= {child.name() for child in started}
    assert any(child.name().startswith("ray::ServeReplica") for child in started)
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=90)
    assert process.returncode == 0, output
    assert f"serving {bundles / 'text-bundle'} at http://127.0.0.1:{port}" in output
    gone, alive = psutil.wait_procs(started, timeout=10)
    assert not alive, [(child.pid, child.name()) for child in alive]
