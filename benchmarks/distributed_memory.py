"""Peak training memory per process under data parallelism: one process against two, same global batch.

    python benchmarks/distributed_memory.py                   # BERT-base shape, global batch 16 x 128, CPU processes
    python benchmarks/distributed_memory.py --model tiny      # the CI smoke version (seconds)

Every configuration (method x processes x mixed precision) is its own ``torchrun`` launch of this file
with ``--worker``. Each process builds the method's model (``methods.py``, the same seed everywhere),
lets 🤗 accelerate prepare it (DDP when there are two processes), and measures one optimizer step
(forward, ``accelerator.backward``, AdamW step) on its share of the global batch, with
``mdpd_peft.memory.PeakMemory``: CUDA's allocator peak on GPUs, live tensor bytes on CPU, weights
excluded. The launcher keeps the largest peak over the processes.

What it does not count on CPU: DDP's gradient buckets, which are allocated when the model is wrapped
(before the step, like the weights; one copy of the trainable parameters' gradients) and filled by the
communication library outside PyTorch's dispatcher.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from accelerate import Accelerator  # noqa: E402
from accelerate.utils import set_seed  # noqa: E402
from memory_speed import BUILDERS, base_model, environment, random_batch, save_result  # noqa: E402
from methods import optimizer_for, trainable_parameters  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from mdpd_peft.memory import PeakMemory  # noqa: E402

PROCESSES = (1, 2)
PRECISIONS = ("no", "bf16")


def worker(args: argparse.Namespace) -> None:
    """One process of one launch: its peak for one optimizer step, written to ``<output>/rank<r>.json``."""
    accelerator = Accelerator(cpu=args.device == "cpu", mixed_precision=args.mixed_precision)
    set_seed(0)
    model = BUILDERS[args.method](base_model(args.model, accelerator.device))
    optimizer = optimizer_for(model, 1e-4)
    model, optimizer = accelerator.prepare(model, optimizer)
    share = args.batch // accelerator.num_processes
    batch = random_batch(args.model, args.batch, args.length, accelerator.device)
    batch = {key: value[accelerator.process_index * share : (accelerator.process_index + 1) * share] for key, value in batch.items()}
    model.train()
    with PeakMemory(accelerator.device) as meter:
        accelerator.backward(model(**batch).loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    result = {"processes": accelerator.num_processes, "per_process_batch": share, "peak_bytes": meter.peak_bytes}
    result["trainable_parameters"] = trainable_parameters(model)
    Path(args.output, f"rank{accelerator.process_index}.json").write_text(json.dumps(result))


def launch(args: argparse.Namespace, method: str, processes: int, precision: str, folder: Path) -> dict:
    """Runs one configuration on ``processes`` processes; the largest per-process peak, in MiB."""
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", __file__, "--worker",
        "--method", method, "--mixed-precision", precision, "--model", args.model, "--batch", str(args.batch),
        "--length", str(args.length), "--device", args.device, "--output", str(folder),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{method} on {processes} process(es), mixed precision {precision}, failed:\n{result.stderr[-4000:]}")
    ranks = [json.loads(path.read_text()) for path in sorted(folder.glob("rank*.json"))]
    assert len(ranks) == processes, f"{len(ranks)} of {processes} processes reported"
    return {
        "method": method,
        "processes": processes,
        "mixed_precision": precision,
        "per_process_batch": ranks[0]["per_process_batch"],
        "trainable_parameters": ranks[0]["trainable_parameters"],
        "peak_mib": max(rank["peak_bytes"] for rank in ranks) / 2**20,
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["bert-base", "minilm", "tiny"], default="bert-base")
    parser.add_argument("--methods", nargs="+", choices=list(BUILDERS), default=["lora", "mdpd"])
    parser.add_argument("--batch", type=int, default=16, help="global batch, split evenly over the processes")
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output", default=None, help="JSON file (default benchmarks/results/distributed-<model>-<device>.json)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    parser.add_argument("--mixed-precision", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return {}
    if args.batch % max(PROCESSES):
        raise SystemExit(f"--batch {args.batch} must split evenly over {max(PROCESSES)} processes.")
    result = environment(torch.device(args.device), "python benchmarks/distributed_memory.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    result.update(model=args.model, batch=args.batch, length=args.length, runs=[])
    configurations = [(m, n, p) for m in args.methods for p in PRECISIONS for n in PROCESSES]
    with tempfile.TemporaryDirectory() as scratch:
        for index, (method, processes, precision) in enumerate(tqdm(configurations, desc="launches")):
            folder = Path(scratch, str(index))
            folder.mkdir()
            run = launch(args, method, processes, precision, folder)
            result["runs"].append(run)
            tqdm.write(f"{method:<6} {processes} process(es) x batch {run['per_process_batch']:>3}, {precision:<4}: peak {run['peak_mib']:8.1f} MiB per process")
    save_result(result, args.output or Path(__file__).parent / "results" / f"distributed-{args.model}-{args.device}.json")
    return result


if __name__ == "__main__":
    main()
