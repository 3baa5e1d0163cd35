#!/usr/bin/env bash
# One short CUDA check, for a single call on a lent GPU machine: the GPU tests, training
# throughput with AMP at the default batch (512, launch-bound) and at a large batch
# (compute-bound), activation checkpointing's peak memory, a 50-epoch
# `mlflow run -e train -P device=cuda` end to end with system metrics and its analysis (the GPU
# checks), and DDP where there are 2 GPUs or more. The step limits add up to 510 s (600 s with
# DDP), inside one device call.
# A failed step is reported and the next one runs; the exit code says whether any failed.
# Logs go to $OUT when set (the device tool brings that folder back), else to a temp folder.
set -uo pipefail
cd "$(dirname "$0")/.."
export MLFLOW_DISABLE_TELEMETRY=true PYTHONUNBUFFERED=1  # a step killed by timeout keeps its log
LOGS=${OUT:-$(mktemp -d)}
STORE=$(mktemp -d)
export MLFLOW_TRACKING_URI="sqlite:///$STORE/mlflow.db" TVAE_WORK_DIR="$STORE/work"
FAILED=()

step() {  # step NAME TIMEOUT_S COMMAND...: run it; all its output to LOGS/NAME.log, the end here
    local name=$1 limit=$2 start=$SECONDS
    shift 2
    echo "=== $name"
    timeout -k 15 "$limit" "$@" 2>&1 | tee "$LOGS/$name.log" | tail -25
    local rc=${PIPESTATUS[0]}
    echo "=== $name: exit $rc in $((SECONDS - start)) s"
    [ "$rc" -eq 0 ] || FAILED+=("$name")
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; \
print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())" \
    || exit 1
python -c "import pynvml" 2>/dev/null || echo "nvidia-ml-py missing: no GPU system metrics"
step gpu_tests 120 python -m pytest -q -n 0 -m gpu tests/test_gpu.py -p no:cacheprovider
step throughput_512 90 python benchmarks/throughput.py --device cuda --amp auto --rounds 3
step throughput_4096 60 python benchmarks/throughput.py --device cuda --amp auto --rounds 3 \
    --batch-size 4096 --skip-baseline
step checkpointing_memory 60 python benchmarks/checkpointing_memory.py --device cuda
python -c "import mlflow; mlflow.create_experiment('gpu-check', '$STORE/artifacts')"
step mlflow_run_train 120 python -m mlflow run . -e train --env-manager local \
    --experiment-name gpu-check -P device=cuda -P epochs=50
RUN=$(python -c "import mlflow; print(mlflow.search_runs(experiment_names=['gpu-check'], \
max_results=1)['run_id'][0])" 2>/dev/null)
if [ -n "$RUN" ]; then
    step analyze 60 python -m entrypoints.analyze --run-id "$RUN" --register false
else
    echo "=== analyze: skipped, no run in experiment gpu-check"; FAILED+=(analyze)
fi
GPUS=$(python -c "import torch; print(torch.cuda.device_count())") || GPUS=0
if [ "${GPUS:-0}" -ge 2 ]; then  # data parallelism on every GPU here (NCCL)
    step ddp 90 python -m entrypoints.train --config configs/smoke.yaml --device cuda \
        --epochs 5 --nproc "$GPUS"
else
    echo "=== ddp: skipped, $GPUS GPU (NCCL needs one GPU per rank)"
fi
[ ${#FAILED[@]} -eq 0 ] && echo "gpu_check: all steps passed" && exit 0
echo "gpu_check: failed steps: ${FAILED[*]}"
exit 1
