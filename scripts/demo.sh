#!/usr/bin/env bash
# The embedded default, end to end (README command 1, via `make demo`):
# face encoders -> tiny video model -> a held-out identity sampled -> eval table.
# Each stage that already finished in $RUNS is reused, so a second run is quick.
set -euo pipefail
RUNS=${RUNS:-runs/demo}
PY=${PY:-.venv/bin/python}
export PYTHONUNBUFFERED=1
stage() { printf '\n=== %s\n' "$*"; }
t0=$(date +%s)

stage "1/5 training face encoder (frozen f of the identity loss)"
$PY train.py --config configs/face_encoder.py --workdir "$RUNS/face"

stage "2/5 training the evaluation-only face encoder (other seed and width)"
$PY train.py --config configs/face_encoder_eval.py --workdir "$RUNS/face_eval"

stage "3/5 training the tiny video model (configs/tiny.py)"
$PY train.py --config configs/tiny.py --workdir "$RUNS/video" \
  --config.face_encoder_workdir="$RUNS/face" --config.eval_encoder_workdir="$RUNS/face_eval"

stage "4/5 sampling a held-out identity from its references"
$PY -m idjax.data.references --out "$RUNS/heldout" --resolution 32 --overwrite
$PY sample.py --workdir "$RUNS/video" --reference "$RUNS"/heldout/ref_*.png \
  --box main=0.2,0.25,0.7,0.75:0.3,0.3,0.8,0.8 \
  --prompt "$(cat "$RUNS/heldout/prompt.txt")" --out "$RUNS/sample/heldout.mp4" --seed 0 --overwrite

stage "5/5 evaluating on held-out identities"
$PY -m idjax.eval --workdir "$RUNS/video" --num-identities 8 --out "$RUNS/eval.json" --overwrite

echo; echo "demo finished in $(( $(date +%s) - t0 ))s; outputs in $RUNS/"
