"""Adding a task: the whole run to a trained kept side network against LoRA + checkpointing, in one process.

    python benchmarks/adding_a_task.py                      # Rotten Tomatoes, whole split, seed 0
    python benchmarks/adding_a_task.py --task trec_fine

One process, one after the other, on the task's whole training split with ``accuracy.py``'s protocol:

1. the kept side network (``side_task``, the defaults) at the best rate of its grid: the state cache of the training
   split is built from scratch (its folder removed first), then the side network trains on it for its grid's epochs;
2. LoRA r=8 with gradient checkpointing (``lora_checkpointed``) at LoRA's best grid rate (checkpointing changes no
   gradient, so LoRA's grid holds for it), for its grid's epochs (2, the protocol's; 5 on TREC fine).

Each is timed to its reported epoch (the best validation accuracy; evaluation excluded), the cache build counted in
the side network's time; the ratio of the two is the headline, and each run's accuracy stands beside it, so a ratio
bought with accuracy shows. Each run's whole minutes (evaluation included; ``minutes``) give a second ratio. Writes
``results/adding_a_task-<task>-minilm.json``, which ``reporting/side_tasks.py`` renders.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from accuracy import TASKS, run, run_side_task, side_task_cache_dir
from reporting.common import Results, best_learning_rate, by_method
from reporting.side_tasks import BASELINE_FILES, SIDE_TASK_FILES
from result_files import RESULTS, write_result
from transformers.utils import logging as hf_logging



def best_rate(results: Path, file: str, method: str, task: str) -> tuple[float, int]:
    """``method``'s best validation rate in its grid file, and the epochs that grid trained (2 where not recorded)."""
    rows = by_method(Results(results).rows(file), task).get(method)
    if not rows:
        raise SystemExit(f"{results / file} has no {method} runs on {task}: run its learning-rate grid first.")
    chosen, rates = best_learning_rate({method: rows})
    return rates[method], chosen[method][0].get("epochs", 2)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=[name for name in TASKS if name in BASELINE_FILES and name != "fashion-mnist"], default="rotten_tomatoes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--side-epochs", type=int, default=None, help="the kept side network's epochs on the cache (default: its grid's)")
    parser.add_argument("--lora-epochs", type=int, default=None, help="LoRA + checkpointing's epochs (default: LoRA's grid's)")
    parser.add_argument("--train-size", type=int, default=None, help="smoke runs only: first N training examples")
    parser.add_argument("--eval-size", type=int, default=None, help="smoke runs only: first N validation and test examples")
    parser.add_argument("--results", type=Path, default=RESULTS, help="the folder of the grids' result files and of the output")
    args = parser.parse_args(argv)
    hf_logging.set_verbosity_error()
    task = TASKS[args.task](args.task, argparse.Namespace(train_size=args.train_size, eval_size=args.eval_size))
    side_rate, side_epochs = best_rate(args.results, SIDE_TASK_FILES[args.task][0], "side_task", args.task)
    lora_rate, lora_epochs = best_rate(args.results, BASELINE_FILES[args.task][0], "lora", args.task)

    shutil.rmtree(side_task_cache_dir(task), ignore_errors=True)  # the cache build is part of adding the task
    side = run_side_task("side_task", side_rate, args.seed, task, "/tmp/mdpd-adding-a-task/side_task", args.side_epochs or side_epochs)
    lora = run("lora_checkpointed", lora_rate, args.seed, task, "/tmp/mdpd-adding-a-task/lora_checkpointed", args.lora_epochs or lora_epochs)

    side_minutes = side["cache_build_minutes"] + side["train_minutes_to_epoch"]
    result = {
        "task": args.task, "seed": args.seed, "train_size": side["train_size"],
        "side_task": side, "lora_checkpointed": lora,
        "side_task_minutes": side_minutes,  # cache build + training to the reported epoch
        "lora_checkpointed_minutes": lora["train_minutes_to_epoch"],
        "ratio": side_minutes / lora["train_minutes_to_epoch"],
        "whole_run_ratio": side["minutes"] / lora["minutes"],  # each run's minutes, evaluation included
    }  # fmt: skip
    output = args.results / f"adding_a_task-{args.task}-minilm.json"
    write_result(result, output)
    print(f"{args.task}: kept side network {side_minutes:.2f} min (cache {side['cache_build_minutes']:.2f} + training "
          f"{side['train_minutes_to_epoch']:.2f}; test {side['test']:.3f}) against LoRA + checkpointing "
          f"{lora['train_minutes_to_epoch']:.2f} min (test {lora['test']:.3f}): {result['ratio']:.2f}x -> {output}")  # fmt: skip
    return result


if __name__ == "__main__":
    main()
