#!/usr/bin/env bash
# Learn-faster trials (egs/librispeech/RESULTS.md, "Learn-faster trials"): train the named
# trial recipes of this folder side by side, one thread each (on a 2-core machine name two
# at a time), then score them on all 100 test-other utterances (codec eval at 3, 6 and 12 stages;
# tools/unquantized_quality.py). Resumable: a finished training is not redone, a stopped one resumes.
#   bash egs/librispeech/trials/run.sh today schedule
set -euo pipefail
cd "$(dirname "$0")/../../.."
out=${TRIALS_OUT:-exp/trials}
mkdir -p "$out"
pids=()
for name in "$@"; do
  if [ ! -f "$out/$name/model/config.json" ]; then
    OMP_NUM_THREADS=1 codec train "egs/librispeech/trials/$name.yaml" --out-dir "$out/$name" --resume -q \
      > "$out/$name.train.log" 2>&1 &
    pids+=($!)
  fi
done
for pid in "${pids[@]}"; do
  wait "$pid" || { echo "run.sh: error: a training failed (see $out/*.train.log)" >&2; exit 1; }
done
# Scores on all 100 test-other utterances, all trials in one evaluation (PESQ paired per
# utterance): 3, 6 and 12 stages (1.5, 3, 6 kbps), and the decoder of the unquantized latents.
models=()
for name in "$@"; do models+=("$out/$name/model"); done
data=${CODEC_DATA:-../shared/data}/LibriSpeech/test-other
scores="$out/eval_$(IFS=_; echo "$*")"    # one folder per set of trials, e.g. exp/trials/eval_today_schedule
codec eval "${models[@]}" --data "$data" --stages 3,6,12 --opus none --out "$scores"
python tools/unquantized_quality.py "${models[@]}" --data "$data" --json "$scores/unquantized.json"
