#!/usr/bin/env bash
# One short CUDA check (< 5 min on an H100): the GPU tests, then training throughput with AMP
# at the default batch (512, launch-bound) and at a large batch (compute-bound).
set -euo pipefail
cd "$(dirname "$0")/.."
export MLFLOW_DISABLE_TELEMETRY=true
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; \
print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
timeout 180 python -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider
timeout 90 python benchmarks/throughput.py --device cuda --amp auto --epochs 3
timeout 60 python benchmarks/throughput.py --device cuda --amp auto --epochs 3 \
    --batch-size 4096 --skip-baseline
timeout 60 python benchmarks/checkpointing_memory.py --device cuda
# data parallelism on every GPU here (NCCL), end to end into a throwaway SQLite store
GPUS=$(python -c "import torch; print(torch.cuda.device_count())")
STORE=$(mktemp -d)
timeout 120 env MLFLOW_TRACKING_URI="sqlite:///$STORE/mlflow.db" TVAE_WORK_DIR="$STORE/work" \
    python -m entrypoints.train --config configs/smoke.yaml --device cuda --epochs 5 \
    --nproc "$GPUS" | tail -4
