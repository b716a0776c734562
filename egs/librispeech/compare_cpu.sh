#!/usr/bin/env bash
# The quantizer comparison behind egs/librispeech/RESULTS.md, sized for a 2-core CPU.
#
#   bash egs/librispeech/compare_cpu.sh [STEPS] [EVAL_LIMIT]     # defaults: 500 steps, 50 utterances
#
# Every quantizer recipe (recipes/{ste,ema,simvq,diveq,sf_diveq,hybrid}.yaml: 12 stages x 1024
# codes, 0.5-6 kbps) is trained for the same number of steps with the tiny recipe's encoder /
# decoder (8 channels, latent 32, one residual unit per resolution: 0.2 M conv parameters),
# then `codec eval` scores each at 1, 2, 4, 8 and 12 stages on test-other next to Opus at 6, 8
# and 12 kbps. On a GPU, use run.sh with the full recipes instead.
set -euo pipefail
set -f   # --set values hold brackets: no globbing

steps=${1:-500}
limit=${2:-50}
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
size="--set model.channels=8 --set model.latent_dim=32 --set model.dilations=[1]"
train="--set total_steps=$steps --set warmup_steps=50 --set lr=1e-3 --set batch_size=8
  --set data.crop_seconds=0.5 --set data.valid_seconds=2.0 --set data.valid_utterances=10
  --set data.num_workers=0 --set val_every=$((steps / 2)) --set ckpt_every=$((steps / 2))
  --set log_every=25 --set pesq_utterances=2 -q"
# shellcheck disable=SC2086
exec bash "$repo/egs/librispeech/run.sh" --stage 1 --stop-stage 4 --exp exp/compare_cpu \
  --train-args "$(echo $size $train)" \
  --eval-args "--stages 1,2,4,8,12 --opus 6,8,12 --limit $limit"
