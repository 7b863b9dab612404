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

    python benchmarks/distributed_memory.py --sharding fsdp2  # torch's FSDP2 instead of DDP

With ``--sharding fsdp2`` each process shards the model itself (``fully_shard`` on each encoder layer, then the
root, on a device mesh of all processes; bf16 as ``MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)``),
since accelerate sets up no FSDP on CPU. Sharding is about the weights, so they count here: each process reports
its resident weight shards, its gradient shards after backward, its optimizer state after the step and the
step's peak above the weights (gathered layers, activations, gradients, new optimizer state); the total per
process is weights + step peak. Results go to ``results/distributed-fsdp2-<model>-<device>.json``.
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
import torch.distributed as dist  # noqa: E402
from accelerate import Accelerator  # noqa: E402
from accelerate.utils import set_seed  # noqa: E402
from memory_speed import BUILDERS, base_model, environment, random_batch  # noqa: E402
from methods import optimizer_for, trainable_parameters  # noqa: E402
from result_files import RESULTS, write_result  # noqa: E402
from torch.distributed.device_mesh import init_device_mesh  # noqa: E402
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard  # noqa: E402
from torch.distributed.tensor import DTensor  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from mdpd_peft.memory import PeakMemory  # noqa: E402

PROCESSES = (1, 2)
PRECISIONS = ("no", "bf16")
SHARDINGS = ("ddp", "fsdp2")


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


def local_bytes(tensors) -> int:
    """Bytes this process holds of ``tensors``: its shard of a DTensor, all of a plain tensor."""
    local = [t.to_local() if isinstance(t, DTensor) else t for t in tensors]
    return sum(t.numel() * t.element_size() for t in local)  # not storage sizes: FSDP's gradients are views of one buffer


def fsdp2_worker(args: argparse.Namespace) -> None:
    """One process of an FSDP2 launch: its weights, gradients, optimizer state and step peak, to ``<output>/rank<r>.json``."""
    device = torch.device(args.device)
    dist.init_process_group("gloo" if device.type == "cpu" else "nccl")
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    rank, world_size = dist.get_rank(), dist.get_world_size()
    set_seed(0)
    model = BUILDERS[args.method](base_model(args.model, device))
    mesh = init_device_mesh(device.type, (world_size,))
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if args.mixed_precision == "bf16" else MixedPrecisionPolicy()
    for layer in model.get_base_model().base_model.encoder.layer:
        fully_shard(layer, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    optimizer = optimizer_for(model, 1e-4)
    share = args.batch // world_size
    batch = {key: value[rank * share : (rank + 1) * share] for key, value in random_batch(args.model, args.batch, args.length, device).items()}
    weights = local_bytes([*model.parameters(), *model.buffers()])
    model.train()
    with PeakMemory(device) as meter:
        model(**batch).loss.backward()
        gradients = local_bytes(p.grad for p in model.parameters() if p.grad is not None)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    optimizer_state = local_bytes(t for state in optimizer.state.values() for t in state.values() if isinstance(t, torch.Tensor))
    result = {
        "processes": world_size, "per_process_batch": share, "peak_bytes": meter.peak_bytes, "weight_bytes": weights,
        "gradient_bytes": gradients, "optimizer_state_bytes": optimizer_state, "trainable_parameters": trainable_parameters(model),
    }  # fmt: skip
    Path(args.output, f"rank{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


def launch(args: argparse.Namespace, method: str, processes: int, precision: str, folder: Path) -> dict:
    """Runs one configuration on ``processes`` processes; the largest per-process peak, in MiB."""
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", __file__, "--worker",
        "--method", method, "--mixed-precision", precision, "--model", args.model, "--batch", str(args.batch),
        "--length", str(args.length), "--device", args.device, "--output", str(folder), "--sharding", args.sharding,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{method} on {processes} process(es), mixed precision {precision}, failed:\n{result.stderr[-4000:]}")
    ranks = [json.loads(path.read_text()) for path in sorted(folder.glob("rank*.json"))]
    assert len(ranks) == processes, f"{len(ranks)} of {processes} processes reported"
    run = {
        "method": method,
        "processes": processes,
        "mixed_precision": precision,
        "per_process_batch": ranks[0]["per_process_batch"],
        "trainable_parameters": ranks[0]["trainable_parameters"],
        "peak_mib": max(rank["peak_bytes"] for rank in ranks) / 2**20,
    }
    if args.sharding == "fsdp2":  # the largest over the processes, each figure
        for name in ("weight", "gradient", "optimizer_state"):
            run[f"{name}_mib"] = max(rank[f"{name}_bytes"] for rank in ranks) / 2**20
        run["total_mib"] = max(rank["weight_bytes"] + rank["peak_bytes"] for rank in ranks) / 2**20
    return run


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["bert-base", "minilm", "tiny"], default="bert-base")
    parser.add_argument("--methods", nargs="+", choices=list(BUILDERS), default=["lora", "mdpd"])
    parser.add_argument("--batch", type=int, default=16, help="global batch, split evenly over the processes")
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sharding", choices=SHARDINGS, default="ddp", help="ddp: accelerate's data parallelism; fsdp2: torch's fully_shard")
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=list(PRECISIONS), help="mixed precision settings to run")
    parser.add_argument("--output", default=None, help="JSON file (default benchmarks/results/distributed[-fsdp2]-<model>-<device>.json)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    parser.add_argument("--mixed-precision", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        (fsdp2_worker if args.sharding == "fsdp2" else worker)(args)
        return {}
    if args.batch % max(PROCESSES):
        raise SystemExit(f"--batch {args.batch} must split evenly over {max(PROCESSES)} processes.")
    result = environment(torch.device(args.device), "python benchmarks/distributed_memory.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    result.update(model=args.model, batch=args.batch, length=args.length, sharding=args.sharding, runs=[])
    configurations = [(m, n, p) for m in args.methods for p in args.precisions for n in PROCESSES]
    with tempfile.TemporaryDirectory() as scratch:
        for index, (method, processes, precision) in enumerate(tqdm(configurations, desc="launches")):
            folder = Path(scratch, str(index))
            folder.mkdir()
            run = launch(args, method, processes, precision, folder)
            result["runs"].append(run)
            tqdm.write(f"{method:<6} {processes} process(es) x batch {run['per_process_batch']:>3}, {precision:<4}: peak {run['peak_mib']:8.1f} MiB per process")
    name = "distributed" if args.sharding == "ddp" else f"distributed-{args.sharding}"
    write_result(result, args.output or RESULTS / f"{name}-{args.model}-{args.device}.json")
    return result


if __name__ == "__main__":
    main()
