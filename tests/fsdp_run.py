"""MDPD under torch's FSDP2 on a CPU device mesh (gloo): the runs ``tests/test_fsdp.py`` starts in one ``torchrun``.

    torchrun --standalone --nproc_per_node 2 tests/fsdp_run.py OUT

For every case of ``CASES`` each rank builds the same tiny MDPD model (conftest's random BERT, dropout off),
shards it with ``fully_shard`` in the case's layout, trains ``STEPS`` AdamW steps on its half of the global
batch, reads the side network's logged values, gathers the full state and fades it on rank 0
(``gathered_faded_model``). Then ``MDPDTrainer`` logs, evaluates and saves the faded model of a model
sharded here (accelerate on CPU sets up no FSDP of its own). Each rank writes ``OUT/rank<r>.pt``
(losses and logged values per case, the Trainer's log history) and rank 0 ``OUT/faded.pt`` (the faded
state dict per case) and ``OUT/trainer/faded``. ``train_on`` is also the 1-process reference the test runs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from accelerate import FullyShardedDataParallelPlugin
from accelerate.utils import get_module_children_bottom_up
from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy
from datasets import Dataset
from peft import get_peft_model
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from transformers import TrainingArguments, default_data_collator

sys.path.insert(0, str(Path(__file__).parent))
from conftest import VOCAB, tiny_text_model  # noqa: E402
from launching import exit_without_teardown  # noqa: E402

from mdpd_peft import MDPDConfig, MDPDTrainer, gathered_faded_model  # noqa: E402
from mdpd_peft.gathering import is_sharded  # noqa: E402

STEPS = 3
GLOBAL_BATCH = 8
TOKENS = 12
BF16 = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
# name: (MDPDConfig arguments, wrapping layout, mixed precision)
CASES = {
    "ladder": ({}, "transformer_based_wrap", None),
    "ladder-backprop": ({"fading": "backprop"}, "transformer_based_wrap", None),
    "unipt": ({"side_network": "unipt"}, "transformer_based_wrap", None),
    "sherl": ({"side_network": "sherl"}, "transformer_based_wrap", None),
    "dtl": ({"side_network": "dtl"}, "transformer_based_wrap", None),
    "dtl+-backprop": ({"side_network": "dtl+", "fading": "backprop"}, "transformer_based_wrap", None),
    "side-units": ({}, "side_units", None),
    "size-based": ({}, "size_based_wrap", None),
    "ladder-bf16": ({}, "transformer_based_wrap", BF16),
    "side-units-bf16": ({}, "side_units", BF16),  # the side network computes in bf16 in a unit of its own
}
MIN_NUM_PARAMS = 13_000  # size_based_wrap: the side network (14,183 parameters) is a unit, its head (51) is not; BertEmbeddings (12,160) is not


def mdpd_model(**config_kwargs):
    """conftest's tiny BERT without dropout, under MDPD at r=4: every rank and the reference build the same one."""
    base = tiny_text_model()
    for module in base.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    torch.manual_seed(0)
    return get_peft_model(base, MDPDConfig(task_type="SEQ_CLS", reduction_factor=4, **config_kwargs))


def global_batch() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        "input_ids": torch.randint(5, VOCAB, (GLOBAL_BATCH, TOKENS), generator=generator),
        "attention_mask": torch.ones(GLOBAL_BATCH, TOKENS, dtype=torch.long),
        "labels": torch.randint(0, 3, (GLOBAL_BATCH,), generator=generator),
    }


def train_on(model, batch: dict[str, torch.Tensor], steps: int = STEPS) -> list[dict[str, float]]:
    """``steps`` AdamW steps on ``batch``; the loss and its terms at each step. Seeds the masks as the Trainer would."""
    torch.manual_seed(1)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    model.train()
    losses = []
    for _ in range(steps):
        output = model(**batch)
        output.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append({"loss": output.loss.item(), **{k: v.item() for k, v in model.base_model.latest_losses.items()}})
    return losses


def has_forward(module: torch.nn.Module) -> bool:
    return type(module).forward is not torch.nn.Module.forward


def shard(model, layout: str, mesh, mp_policy: MixedPrecisionPolicy | None) -> None:
    """``fully_shard`` the units of ``layout``, then the root: accelerate's FSDP2 wrapping (its policies, bottom-up,
    the input embeddings as a unit of their own) for ``transformer_based_wrap`` (``BertLayer``, as in
    examples/accelerate_configs/fsdp.yaml) and ``size_based_wrap``; ``side_units`` by hand: each encoder layer,
    each side block and the side network."""
    kwargs = {"mesh": mesh, "mp_policy": mp_policy or MixedPrecisionPolicy()}
    if layout == "side_units":
        side = model.base_model.mdpd_side["default"]
        units = [*model.get_base_model().bert.encoder.layer, *side.blocks, side]
    else:
        plugin = FullyShardedDataParallelPlugin(
            fsdp_version=2, auto_wrap_policy=layout, transformer_cls_names_to_wrap=["BertLayer"], min_num_params=MIN_NUM_PARAMS
        )
        plugin.set_auto_wrap_policy(model)
        policy = fsdp2_prepare_auto_wrap_policy(plugin, model)
        # fully_shard refuses containers without a forward (the layer ModuleList), which accelerate 1.15 would pass it
        units = [module for module in get_module_children_bottom_up(model)[:-1] if policy(module) and has_forward(module)]
    for unit in units:
        fully_shard(unit, **kwargs)
    embeddings = model.get_input_embeddings()
    if layout != "side_units" and not is_sharded(embeddings):  # accelerate would also shard them when a unit above holds them
        fully_shard(embeddings, **kwargs)
    fully_shard(model, **kwargs)


def run_case(name: str, mesh, rank_rows: slice) -> tuple[dict, dict | None]:
    config_kwargs, layout, mp_policy = CASES[name]
    model = mdpd_model(**config_kwargs)
    shard(model, layout, mesh, mp_policy)
    units = [name for name, module in model.named_modules() if isinstance(module, FSDPModule)]
    losses = train_on(model, {key: value[rank_rows] for key, value in global_batch().items()})
    logged = model.base_model.mdpd_side["default"].logged_values()  # a collective under FSDP: every rank calls it
    faded = gathered_faded_model(model)
    return {"losses": losses, "logged": logged, "units": units}, None if faded is None else faded.state_dict()


def run_trainer(mesh, output_dir: Path) -> list[dict]:
    """MDPDTrainer's logging, evaluation and faded save on a model sharded here; its training steps are taken by
    ``compute_loss`` and an optimizer, as the Trainer's loop would (its own loop would wrap the model in DDP)."""
    model = mdpd_model()
    shard(model, "transformer_based_wrap", mesh, None)
    rows = 4 * dist.get_world_size()
    batch = global_batch()
    data = Dataset.from_dict({key: value.repeat(rows // GLOBAL_BATCH + 1, *[1] * (value.dim() - 1))[:rows].tolist() for key, value in batch.items()})
    args = TrainingArguments(
        str(output_dir), per_device_eval_batch_size=4, report_to=[], use_cpu=True, dataloader_pin_memory=False, logging_steps=1
    )
    trainer = MDPDTrainer(model=model, args=args, eval_dataset=data, data_collator=default_data_collator)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    rank_rows = slice(4 * dist.get_rank(), 4 * dist.get_rank() + 4)
    for _ in range(2):
        model.train()
        loss = trainer.compute_loss(model, {key: value[rank_rows] for key, value in batch.items()})
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        trainer.log({"loss": loss.item()})
    trainer.evaluate()
    trainer.save_faded_model(str(output_dir / "faded"))
    return trainer.state.log_history


def main() -> None:
    output_dir = Path(sys.argv[1])
    cases = sys.argv[2:] or list(CASES)
    dist.init_process_group("gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    mesh = init_device_mesh("cpu", (world_size,))
    rows = GLOBAL_BATCH // world_size
    results, faded = {}, {}
    for name in cases:
        results[name], faded[name] = run_case(name, mesh, slice(rank * rows, (rank + 1) * rows))
    results["trainer_log"] = run_trainer(mesh, output_dir / "trainer")
    torch.save(results, output_dir / f"rank{rank}.pt")
    if rank == 0:
        torch.save(faded, output_dir / "faded.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
    exit_without_teardown()
