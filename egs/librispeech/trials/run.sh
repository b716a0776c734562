#!/usr/bin/env bash
# Learn-faster trials (egs/librispeech/RESULTS.md, "Learn-faster trials"): train the named
# trial recipes of this folder side by side, one thread each (a 2-core machine: two at a
# time), then score each on all 100 test-other utterances (codec eval: unquantized, 3, 6 and
# 12 stages). Resumable: a finished training is not redone, a stopped one resumes.
#   bash egs/librispeech/trials/run.sh today schedule
set -euo pipefail
cd "$(dirname "$0")/../../.."
out=${TRIALS_OUT:-exp/trials}
mkdir -p "$out"
for name in "$@"; do
  if [ ! -f "$out/$name/model/config.json" ]; then
    OMP_NUM_THREADS=1 codec train "egs/librispeech/trials/$name.yaml" --out-dir "$out/$name" --resume -q \
      > "$out/$name.train.log" 2>&1 &
  fi
done
wait
for name in "$@"; do
  [ -f "$out/$name/eval/summary.md" ] || codec eval "$out/$name/model" --stages 3,6,12 --unquantized \
    --opus none --out "$out/$name/eval" --force
done
