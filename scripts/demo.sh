#!/usr/bin/env bash
# The embedded default, end to end (README command 1, via `make demo`):
# face encoders -> video autoencoder -> tiny latent video model (64x64) ->
# a held-out identity sampled -> eval table.
# Each stage that already finished in $RUNS is reused, so a second run is quick.
set -euo pipefail
RUNS=${RUNS:-runs/demo}
PY=${PY:-.venv/bin/python}
export PYTHONUNBUFFERED=1
stage() { printf '\n=== %s\n' "$*"; }
t0=$(date +%s)
encoders=(--config.face_encoder_workdir="$RUNS/face" --config.eval_encoder_workdir="$RUNS/face_eval")

stage "1/6 training face encoder (frozen f of the identity loss)"
$PY train.py --config configs/face_encoder.py --workdir "$RUNS/face"

stage "2/6 training the evaluation-only face encoder (other seed and width)"
$PY train.py --config configs/face_encoder_eval.py --workdir "$RUNS/face_eval"

stage "3/6 training the video autoencoder (configs/autoencoder.py: 64x64 -> 16x16x8)"
$PY train.py --config configs/autoencoder.py --workdir "$RUNS/autoencoder" "${encoders[@]}"

stage "4/6 training the tiny video model on its latents (configs/tiny_latent.py)"
$PY train.py --config configs/tiny_latent.py --workdir "$RUNS/video" "${encoders[@]}" \
  --config.autoencoder_workdir="$RUNS/autoencoder"

stage "5/6 sampling a held-out identity from its references"
$PY -m idjax.data.references --out "$RUNS/heldout" --resolution 64 --overwrite
$PY sample.py --workdir "$RUNS/video" --reference "$RUNS"/heldout/ref_*.png \
  --box main=0.2,0.25,0.7,0.75:0.3,0.3,0.8,0.8 \
  --prompt "$(cat "$RUNS/heldout/prompt.txt")" --out "$RUNS/sample/heldout.mp4" --seed 0 --overwrite

stage "6/6 evaluating on held-out identities"
$PY -m idjax.eval --workdir "$RUNS/video" --num-identities 32 --out "$RUNS/eval.json" --overwrite

echo; echo "demo finished in $(( $(date +%s) - t0 ))s; outputs in $RUNS/"
