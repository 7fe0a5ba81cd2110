#!/usr/bin/env bash
# The GPU checks in one run (a lent GPU machine: 15 minutes in all): the CUDA tests, the Triton
# kernel tests, then the speed table against cuDNN, float32 with TF32 off and on.
#   bash benchmarks/gpu_check.sh 2>&1 | tee gpu_check.txt
set -u
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
PEEPHOLE_LSTM_BACKEND=auto timeout 240 python -m pytest -q -x -p no:cacheprovider tests/test_cuda.py 2>&1 | tail -15
timeout 120 python -m pytest -q -x -p no:cacheprovider tests/test_triton.py 2>&1 | tail -5
for tf32 in 0 1; do
  echo "== TF32 (cudnn.allow_tf32 and matmul.allow_tf32) = $tf32"
  PEEPHOLE_TF32=$tf32 timeout 200 python - <<'PY'
import os, runpy, sys, torch
on = os.environ["PEEPHOLE_TF32"] == "1"
torch.backends.cudnn.allow_tf32 = on
torch.backends.cuda.matmul.allow_tf32 = on
sys.argv = ["speed.py", "--device", "cuda", "--runs", "5", "--variants", "fused/triton", "fused/python"]
runpy.run_path("benchmarks/speed.py", run_name="__main__")
PY
done
