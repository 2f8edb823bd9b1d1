#!/usr/bin/env bash
# One GPU lease, prepared (about 9 minutes of its 15): the cuDNN attention
# check first, then the Wan 2.1 1.3B adapters' train step (issue 14's GPU
# item, random weights), then the base config's benchmark and kernel profile
# (issue 17). Each stage is time-boxed so a slow one cannot eat the others;
# every result goes under $OUT (copy them to bench/results/).
#   bash scripts/gpu_session.sh        (on the device machine, $OUT set)
# The device machine lacks grain and its needs: carry them as wheels in .whl/
# (see the device tool's notes): grain==0.2.18 array_record==0.8.6
# cloudpickle==3.1.3 portpicker ml_collections==1.1.0.
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
stage() { local name=$1 t=$2; shift 2; echo; echo "=== $name"; timeout "$t" "$@"; echo "(exit $?)"; }
# The attention part of the check (its second part, a train step under each
# implementation, needs longer than a lease can spare).
stage "cuDNN attention vs XLA" 80 python3 -c "import sys; sys.path.insert(0, 'scripts')
import check_cudnn_attention as c; w = c.attention_errors(); print('worst', w); sys.exit(w > 0.05)" \
  2>&1 | tee "$OUT/check_cudnn.log"
stage "Wan 1.3B adapters b2" 170 python3 bench/wan_step.py --size 1.3b --batch 2 \
  --out "$OUT/wan_step_1.3b_${tag}_b2.json"
stage "base b$BATCH" 120 python3 bench/train_step.py --config configs/base.py \
  --config.train.batch_size=$BATCH --measure config --out "$OUT/train_step_base_${tag}_b$BATCH.json"
stage "profile base b$BATCH" 130 python3 bench/profile_step.py --config configs/base.py \
  --config.train.batch_size=$BATCH --out "$OUT/profile_base_${tag}_b$BATCH.json" --trace-dir /tmp/trace
echo "gpu session done"
