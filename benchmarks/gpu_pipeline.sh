#!/usr/bin/env bash
# benchmarks/gpu_pipeline.py on a lent GPU machine, in one go (issue 8).
#
#   bash benchmarks/gpu_pipeline.sh prepare      # here, before the loan: 300 sample JPEGs
#                                                # (~35 MB) into .bench/sample (git-ignored)
#   run: command "bash benchmarks/gpu_pipeline.sh run", carry [".bench/sample"], timeout_s 540
#
# `run` checks the imports first (the device machine reaches no package index, so nothing is
# installed), then prints every figure; ~8 minutes on an H100/H200 with the defaults below.
set -euo pipefail
cd "$(dirname "$0")/.."
SAMPLE=.bench/sample
case "${1:-run}" in
  prepare)
    src=${2:-../shared/datasets/imagenet-sample/images}
    mkdir -p "$SAMPLE"
    ls "$src" | grep -i '\.jpe\?g$' | sort | head -n "${COUNT:-300}" | while read -r name; do
      cp "$src/$name" "$SAMPLE/"
    done
    du -sh "$SAMPLE"
    ;;
  run)
    PY=${PYTHON:-python3}
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    "$PY" -c "import torch, torchvision, open_clip, faiss, safetensors; \
print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'torchvision', torchvision.__version__)"
    export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} MMSEARCH_BACKEND=torch HF_HUB_OFFLINE=1
    # ViT-B-32 first (the issue's 8,000 img/s target), then ViT-L-14 (1,000 img/s target).
    timeout "${LIMIT_S:-500}" "$PY" -m benchmarks.gpu_pipeline --device cuda --source "$SAMPLE" \
      --count "${VARIANTS:-20000}" --arch "${ARCHS:-ViT-B-32,ViT-L-14}" \
      --baseline-limit "${BASELINE:-3000}" ${EXTRA:-}
    ;;
  *)
    echo "usage: $0 prepare [SAMPLE_DIR] | run" >&2
    exit 2
    ;;
esac
