#!/usr/bin/env bash
# The quantizer comparison behind egs/librispeech/RESULTS.md ("Quantizer comparison"), on a
# 2-core CPU: each kind's recipe (egs/librispeech/compare/<kind>.yaml: the shipped model's encoder and
# decoder, a fresh 12 x 1024 stack of that kind) trains for the same wall time, one kind after
# another, then is scored on all of test-other at 1, 2, 3, 6, 9 and 12 stages (0.5-6 kbps),
# fixed-width and range-coded (priors from 500 train-clean-100 files), next to Opus at 6, 8
# and 12 kbps; tools/compare_report.py merges the kinds into results/compare/.
#
#   bash egs/librispeech/compare.sh [KIND ...]     # default: ema ste simvq diveq sf_diveq hybrid
#
# A kind whose results are already under egs/librispeech/results/compare/<kind>/ is skipped,
# so the comparison can be finished over several sessions; an interrupted training is
# started again from scratch (not resumed), so that every kind gets one uninterrupted
# MINUTES-long run (default 40). Run nothing else heavy beside it: the budget is wall time.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo"
kinds=${*:-ema ste simvq diveq sf_diveq hybrid}
exp=${EXP:-exp/compare}
minutes=${MINUTES:-40}
results=egs/librispeech/results/compare
data=${LIBRISPEECH:-$repo/../shared/data/LibriSpeech}
stages=1,2,3,6,9,12
log() { echo "[$(date '+%H:%M:%S')] $1" >&2; }

for k in $kinds; do
  [ -f "egs/librispeech/compare/$k.yaml" ] || { echo "compare.sh: error: no recipe egs/librispeech/compare/$k.yaml" >&2; exit 2; }
  if [ -f "$results/$k/results.csv" ]; then log "$k: results present, skipped"; continue; fi
  if [ ! -f "$exp/$k/model/config.json" ]; then
    rm -rf "$exp/$k"
    log "$k: training for $minutes min -> $exp/$k"
    python -m codec train "egs/librispeech/compare/$k.yaml" --out-dir "$exp/$k" --set "max_minutes=$minutes" -q
  fi
  if [ ! -f "$exp/$k/model/priors.json" ]; then
    log "$k: priors"
    python -m codec priors --model "$exp/$k/model" --data "$data/train-clean-100" --max-files 500 --force
  fi
  opus=none   # Opus is scored once, beside the first kind evaluated
  [ -f "$results/opus/results.csv" ] || opus=6,8,12
  log "$k: codec eval -> $exp/eval/$k"
  python -m codec eval "$exp/$k/model" --data "$data/test-other" --stages "$stages" --opus "$opus" \
    --entropy --jobs 2 --out "$exp/eval/$k"
  mkdir -p "$results/$k" "$results/opus"
  if [ "$opus" != none ]; then
    awk -F, 'NR == 1 || $1 ~ /^opus/' "$exp/eval/$k/results.csv" > "$results/opus/results.csv"
  fi
  # codec eval names a system by its folder ("model"); the merged tables need "<kind>/model"
  name='NR == 1 {print; next} $1 !~ /^opus/ {sub(/^model/, k "/model", $1); print}'
  awk -F, -v OFS=, -v k="$k" "$name" "$exp/eval/$k/results.csv" > "$results/$k/results.csv"
  awk -F, -v OFS=, -v k="$k" "$name" "$exp/eval/$k/codebooks.csv" > "$results/$k/codebooks.csv"
  cp "$exp/$k/log.csv" "$results/$k/train_log.csv"
done
python tools/compare_report.py "$results"
