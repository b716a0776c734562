#!/usr/bin/env bash
# Equal-time synthesis trials: each recipe trains for the same wall time on this machine
# (nothing else running, one process, all cores, same seed and data), then is scored on all
# 100 test-other utterances: the decoder on unquantized latents, and real bitstreams at 3, 6
# and 12 stages (1.5, 3 and 6 kbps).
#   bash egs/librispeech/synthesis_trials.sh [MINUTES] [RECIPE ...]
set -euo pipefail
cd "$(dirname "$0")/../.."
minutes=${1:-40}
shift || true
recipes=("${@:-speech16k_v1 synthesis_fine synthesis_atan2}")   # egs/librispeech/history/
for r in ${recipes[@]}; do
  out=exp/trial_$r
  codec train egs/librispeech/history/$r.yaml --out-dir "$out" --set max_minutes="$minutes" -q
done
for r in ${recipes[@]}; do
  out=exp/trial_$r
  python tools/unquantized_quality.py "$out/model" --json "$out/unquantized.json"
  codec eval "$out/model" --stages 3,6,12 --opus none --out "exp/eval_trial_$r"
done
