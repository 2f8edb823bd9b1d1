#!/usr/bin/env bash
# Long video (`make long-video`, after `make demo`): fine-tune the demo's video
# model on 16-frame clips (configs/tiny_latent_long.py), then evaluate both
# models on 240-frame clips made in 16-frame chunks with 8 frames of context
# (one shot, chunked and naive rows; drift and seams). Stages already done in
# $RUNS are reused, as in demo.sh.
set -euo pipefail
RUNS=${RUNS:-runs/demo}
PY=${PY:-.venv/bin/python}
N=${N:-8}  # held-out identities of the evaluation
export PYTHONUNBUFFERED=1
if [ ! -f "$RUNS/video/config.json" ]; then
  echo "No demo video model in $RUNS/video: run 'make demo' first." >&2
  exit 2
fi
stage() { printf '\n=== %s\n' "$*"; }
t0=$(date +%s)
stage "1/3 fine-tuning the demo model on 16-frame clips (configs/tiny_latent_long.py)"
$PY train.py --config configs/tiny_latent_long.py --workdir "$RUNS/video_long" \
  --config.train.init_from="$RUNS/video" --config.autoencoder_workdir="$RUNS/autoencoder" \
  --config.face_encoder_workdir="$RUNS/face" --config.eval_encoder_workdir="$RUNS/face_eval"
long=(--frames 240 --chunk-frames 16 --context-frames 8 --num-identities "$N" --overwrite --no-progress)
stage "2/3 240 frames from the demo model (trained on 4-frame clips)"
$PY -m idjax.eval --workdir "$RUNS/video" --out "$RUNS/long/eval240_demo.json" "${long[@]}"
stage "3/3 240 frames from the fine-tuned model (16-frame clips)"
$PY -m idjax.eval --workdir "$RUNS/video_long" --out "$RUNS/long/eval240_long.json" "${long[@]}"
echo; echo "long video finished in $(( $(date +%s) - t0 ))s; outputs in $RUNS/long/"
