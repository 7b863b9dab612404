"""The ``mdpd-peft`` command. ``mdpd-peft serve BUNDLE --encoder PATH_OR_ID`` serves every task of a side-task bundle
over HTTP (Ray Serve; needs the ``serve`` extra)."""

from __future__ import annotations

import argparse
import functools
import sys
from dataclasses import fields

from .serving.runner import run_until_signalled
from .serving.settings import ServerSettings

SETTING_HELP = {
    "max_batch_size": "inputs per encoder pass: inputs of concurrent requests wait together up to this many",
    "batch_wait_timeout_s": "seconds an input waits for others before its pass runs",
    "max_inputs": "the most inputs one request may hold (more: 422)",
    "max_ongoing_requests": "requests one replica takes at a time; the others queue",
    "max_queued_requests": "requests that may queue; beyond them a request gets 503 at once (-1: no bound)",
    "replicas": "copies of the deployment, each holding the whole bundle",
    "num_cpus": "CPUs reserved per replica; PyTorch uses that many threads",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mdpd-peft", description="mdpd-peft: side-network fine-tuning for PEFT, and serving kept side tasks.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        help="serve a side-task bundle over HTTP (Ray Serve)",
        description="Serve every task of a side-task bundle (save_side_tasks' folder, with its processor) behind one "
        "HTTP endpoint: POST /v1/classify, GET /v1/tasks, GET /health, API docs at /docs. Runs until Ctrl+C or "
        "SIGTERM, then stops everything it started.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    serve.add_argument("bundle", metavar="BUNDLE", help="the bundle folder or Hub id (--backend onnx: the export_onnx folder)")
    serve.add_argument("--encoder", metavar="PATH_OR_ID", help="the encoder the tasks were trained on (needed by --backend torch)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on")
    serve.add_argument("--backend", choices=["torch", "onnx"], default="torch", help="PyTorch, or ONNX Runtime on an export_onnx folder")
    serve.add_argument("--address", metavar="RAY_ADDRESS", help="join this Ray cluster (e.g. 'auto', 'ray://head:10001'); default: start a local Ray instance")
    serve.add_argument("--name", default="side-tasks", help="the Ray Serve application's name")
    serve.add_argument("--route-prefix", default="/", help="the URL prefix of the routes")
    defaults = ServerSettings()
    for field in fields(ServerSettings):
        value = getattr(defaults, field.name)
        serve.add_argument(f"--{field.name.replace('_', '-')}", type=type(value), default=value, help=SETTING_HELP[field.name])
    serve.set_defaults(run=functools.partial(run_serve, parser=serve))
    return parser


def run_serve(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Check what can be checked before Ray starts (a bad path fails in seconds), then serve until signalled."""
    try:
        from .serving.app import build_app, check_backend, load_pipeline
    except ImportError as error:
        parser.error(f"serving needs the serve extra (pip install 'mdpd-peft[serve]'): {error}")
    try:
        settings = ServerSettings(**{field.name: getattr(args, field.name) for field in fields(ServerSettings)})
        check_backend(args.backend, args.encoder)
        if args.backend == "torch":
            check_torch_bundle(args.bundle, args.encoder)
    except (ValueError, RuntimeError, OSError) as error:
        parser.error(str(error))
    app = build_app(functools.partial(load_pipeline, args.bundle, args.encoder, args.backend), settings)

    def ready(url: str) -> None:
        print(f"mdpd-peft: serving {args.bundle} at {url} (API docs: {url}/docs). Stop with Ctrl+C.", flush=True)

    run_until_signalled(app, settings, args.host, args.port, args.address, args.name, args.route_prefix, on_ready=ready)
    return 0


def check_torch_bundle(bundle: str, encoder: str) -> None:
    """The bundle holds side tasks and the encoder's config resolves (both cheap: no weights are read)."""
    from transformers import AutoConfig

    from .side_tasks.bundle import bundle_tasks, local_bundle

    bundle_tasks(local_bundle(bundle))
    AutoConfig.from_pretrained(encoder)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
