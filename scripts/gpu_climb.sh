#!/usr/bin/env bash
# One GPU lease, issue 17's MFU climb on the base config (see
# bench/results/gpu_climb_notes.md): the cuDNN attention check first, then
# one train-step measurement per variant, each time-boxed, results under $OUT.
#   bash scripts/gpu_climb.sh        (on the device machine, $OUT set)
# The variants: DiT-XL's 16 heads of 72 (base.py until 2026-11-27), heads of
# 64, heads of 128 (base.py now: cuDNN's flash kernels tile head_dim in 64s,
# so 72 paid for 128), and the 28-block scan unrolled (no stacked residual
# buffers; it did not compile within 150 s on an H100).
set -u
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.95}
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
python3 -c "import jax, flax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())" | tee -a "$OUT/gpu.txt"
B=${BATCH:-8}; tag=${TAG:-h100}
stage() { local name=$1 t=$2; shift 2; echo; echo "=== $name"; timeout "$t" "$@"; echo "(exit $?)"; }
step() {  # name timeout [python prelude] -- overrides
  local name=$1 t=$2 pre=$3; shift 3
  stage "$name" "$t" python3 -c "import sys; sys.path.insert(0, 'bench'); $pre
import train_step; train_step.main(sys.argv[1:])" --config configs/base.py --measure config \
    --config.train.batch_size=$B --out "$OUT/train_step_base_${tag}_b${B}_$name.json" "$@"
}
stage cudnn_check 80 python3 -c "import sys; sys.path.insert(0, 'scripts'); import check_cudnn_attention as c; w = c.attention_errors(); print('worst', w); sys.exit(w > 0.05)" 2>&1 | tee "$OUT/check_cudnn.log"
step hd72 115 "" --config.model.num_heads=16 --config.model.text_width=768
step hd64 115 "" --config.model.num_heads=18 --config.model.text_width=576
step hd128 185 ""
step unrolled 240 "import idjax.models.dit as d; d.MAX_UNROLLED_DEPTH = 28"
echo "gpu climb done"
