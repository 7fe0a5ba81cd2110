#!/usr/bin/env bash
# The GPU checks in one run (a lent GPU machine: 15 minutes in all, starts included): the CUDA
# tests, exactness of every configuration against the float64 reference on the GPU, the
# forecasting CLI's main job on the GPU, then the speed table against cuDNN (float32, TF32 off)
# for every configuration of speed.py. About 5 minutes on an H100. GPU_CHECK_ALL=1 adds the
# tuning A/B, TF32 on and bf16 autocast. Logs under $OUT when it is set.
#   bash benchmarks/gpu_check.sh 2>&1 | tee gpu_check.txt
# The machine has no package registry: the CLI's jsonargparse travels as wheels in .whl/
# (pip download --no-deps jsonargparse docstring_parser typeshed_client, see the device notes).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp}
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv,noheader || true
python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
PYTEST="python3 -m pytest -q -p no:cacheprovider -o addopts="
SECONDS=0
PEEPHOLE_LSTM_BACKEND=auto timeout 180 $PYTEST tests/test_cuda.py 2>&1 | tail -25 | tee $OUT/tests.txt
echo "== tests: ${SECONDS} s"
SECONDS=0
timeout 120 python3 benchmarks/cuda_exactness.py 2>&1 | tee $OUT/exactness.txt
echo "== exactness: ${SECONDS} s"
# The README's main job with the model on the GPU (the config says cpu: its 2 x 32-unit model
# is launch-bound); the test table, coverage and the wall time beside the CPU's.
SECONDS=0
timeout 150 python3 -m peephole_lstm fit --config configs/default.yaml --trainer.accelerator gpu \
  --trainer.enable_progress_bar false 2>&1 | tee $OUT/cli_gpu.txt | tail -30
echo "== cli fit on the GPU: ${SECONDS} s"
SPEED="python3 benchmarks/speed.py --device cuda --runs 5"
for config in default packed bidir article; do
  SECONDS=0
  timeout 90 $SPEED --tf32 off --config $config --variants nn.LSTM fused/triton 2>&1 | tee $OUT/speed_$config.txt
  echo "== speed $config: ${SECONDS} s"
done
if [ "${GPU_CHECK_ALL:-0}" = 1 ]; then
  timeout 90 python3 benchmarks/cuda_tune.py 2>&1 | tee $OUT/tune.txt
  timeout 60 $SPEED --tf32 on --variants nn.LSTM fused/triton 2>&1 | tee $OUT/speed_tf32.txt
  timeout 60 $SPEED --tf32 off --sizes S2 S4 --autocast bfloat16 --variants nn.LSTM fused/triton 2>&1 | tee $OUT/speed_bf16.txt
fi
