#!/usr/bin/env bash
# The GPU checks in one run (a lent GPU machine: 15 minutes in all): the CUDA tests, the Triton
# kernel tests on the GPU, an A/B of the tuning constants, the speed table against cuDNN
# (float32, TF32 off), exactness at the benchmark sizes, then TF32 on, bf16 autocast and the
# article's cell. About 4 minutes on an H100. Logs under $OUT when it is set.
#   bash benchmarks/gpu_check.sh 2>&1 | tee gpu_check.txt
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp}
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv,noheader || true
python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
PYTEST="python3 -m pytest -q -p no:cacheprovider -o addopts="
PEEPHOLE_LSTM_BACKEND=auto timeout 240 $PYTEST tests/test_cuda.py 2>&1 | tail -25
SPEED="python3 benchmarks/speed.py --device cuda --runs 5"
timeout 90 python3 benchmarks/cuda_tune.py 2>&1 | tee $OUT/tune.txt
timeout 100 $SPEED --tf32 off --variants fused/triton fused/triton-gemm fused/triton-eager 2>&1 | tee $OUT/speed_fp32.txt
timeout 100 python3 benchmarks/cuda_exactness.py 2>&1 | tee $OUT/exactness.txt
timeout 60 $SPEED --tf32 on --variants fused/triton 2>&1 | tee $OUT/speed_tf32.txt
timeout 60 $SPEED --tf32 off --sizes S2 S4 --autocast bfloat16 --variants fused/triton 2>&1 | tee $OUT/speed_bf16.txt
timeout 90 $SPEED --tf32 off --config article --variants fused/triton 2>&1 | tee $OUT/speed_article.txt
