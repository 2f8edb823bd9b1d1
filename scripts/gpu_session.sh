#!/usr/bin/env bash
# One lease of a GPU, prepared: the cuDNN check first, then the base-config
# benchmarks and a profile. Every result goes under $OUT (and bench/results
# names when copied back). Each stage is time-boxed so a slow one cannot eat
# the others.
#   bash scripts/gpu_session.sh        (on the device machine, $OUT set)
set -u
export PYTHONUNBUFFERED=1
# JAX takes 75% of the GPU by default; the base step at batch 8 needs ~50 GB
# (params, EMA and Adam moments are 21 GB at 1.3B parameters).
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.95}
BATCH=${BATCH:-8}   # 16 fits an H200 (141 GB), not an H100 (80 GB)
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
nvidia-smi --query-gpu=name,memory.used,memory.total,clocks.sm --format=csv | tee "$OUT/gpu.txt"
python3 -c "import jax, flax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())" | tee -a "$OUT/gpu.txt"
tag=${TAG:-h100}
stage() { echo; echo "=== $1"; shift; timeout "$@"; echo "(exit $?)"; }
stage "cuDNN attention vs XLA" 200 python3 scripts/check_cudnn_attention.py 2>&1 | tee "$OUT/check_cudnn.log"
stage "profile base b$BATCH" 130 python3 bench/profile_step.py --config configs/base.py \
  --config.train.batch_size=$BATCH --out "$OUT/profile_base_${tag}_b$BATCH.json" --trace-dir /tmp/trace
stage "base b$BATCH cudnn dots_saveable" 110 python3 bench/train_step.py --config configs/base.py \
  --config.train.batch_size=$BATCH --measure config --out "$OUT/train_step_base_${tag}_b$BATCH.json"
echo "gpu session done"
