#!/usr/bin/env bash
# The quantizer study behind egs/librispeech/RESULTS.md ("Quantizer study"): every kind from one
# neutral start, at 12 x 1,024 and at 8 x 32,768 codes per stage (both 120 bits a frame, 6 kbps),
# with the remedies off and on. A run is named REGIME_KIND_REMEDIES:
#   REGIME    a (12 stages x 1,024 codes) | b (8 stages x 32,768 codes)
#   KIND      ste | ema | simvq | diveq | sf_diveq | rotation | cosine (STE on 8-dim
#             l2-normalised codes with a cosine search, DAC's low-dimensional codes)
#   REMEDIES  off (egs/librispeech/study/remedies_off.yaml) | on (study/base.yaml)
#
#   bash egs/librispeech/study.sh a_ste_off a_ema_off        # trains the runs two at a time
#   DRY_RUN=1 bash egs/librispeech/study.sh a_ste_off         # prints each run's codec train arguments
#
# Runs train side by side, one thread each (name an even number on a 2-core machine), for the
# same steps (study/base.yaml: total_steps), then each is scored on all 100 test-other
# utterances at 1.5, 3 and 6 kbps (a: 3, 6, 12 stages; b: 2, 4, 8), fixed-width and range-coded
# (priors from 500 train-clean-100 files); results land in egs/librispeech/results/study/<run>/
# with the training log (per-stage perplexity, utilisation, dead codes, norm spread, effective
# rank of the stage's input every log_every steps). Then each run's rate-quality curve at every
# stage count (1 to 12, or 1 to 8) on CURVE_FILES (25) of those utterances: stages.csv. A run
# with results is skipped; a stopped training resumes.
#
# The neutral start (NEUTRAL, default egs/librispeech/models/study_neutral, committed: 20 MB, so every
# run of the study, on any machine, starts from the same weights): the learn-faster trial
# egs/librispeech/trials/schedule_180.yaml (the default recipe's settings, recipes/speech16k.yaml)
# at step 8,000, the end of its quantizer-bypassed phase (the stack has not yet been used),
# stored without training state in half precision (it loads into float32). It was made with
#   codec train egs/librispeech/trials/schedule_180.yaml --out-dir exp/neutral_run \
#     --set train.ckpt_every=1000 --set train.val_every=1000 --set train.keep_last=2
#   (stopped after step 8,000: nothing before it depends on the later steps)
#   python tools/export_checkpoint.py exp/neutral_run 8000 egs/librispeech/models/study_neutral --float16
# Each run's results record the start they came from (neutral.sha256: the weights' SHA-256).
# EXP (default exp/study) holds the runs; RESULTS (default egs/librispeech/results/study) their results.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo"
neutral=${NEUTRAL:-egs/librispeech/models/study_neutral}
exp=${EXP:-exp/study}
results=${RESULTS:-egs/librispeech/results/study}
data=${LIBRISPEECH:-${CODEC_DATA:-$repo/../shared/data}/LibriSpeech}
log() { echo "[$(date '+%H:%M:%S')] $1" >&2; }
die() { echo "study.sh: error: $1" >&2; exit 2; }

[ $# -gt 0 ] || die "name the runs, e.g. a_ste_off a_ema_off (see the header of $0)"
[ -n "${DRY_RUN:-}" ] || [ -f "$neutral/config.json" ] || die "no neutral start at $neutral (see the header of $0)"

# The recipe and --set options of one run, from its name.
run_args() {
  local regime kind remedies
  IFS=_ read -r regime kind remedies <<< "${1/sf_diveq/sf-diveq}"
  kind=${kind/sf-diveq/sf_diveq}
  case $remedies in
    on) args=(egs/librispeech/study/base.yaml) ;;
    off) args=(egs/librispeech/study/remedies_off.yaml) ;;
    *) die "$1: remedies must be on or off" ;;
  esac
  case $regime in
    a) args+=(--set model.quantizer.n_stages=12 --set model.quantizer.codebook_size=1024) ;;
    b) args+=(--set model.quantizer.n_stages=8 --set model.quantizer.codebook_size=32768) ;;
    *) die "$1: regime must be a or b" ;;
  esac
  case $kind in
    ste|ema|simvq|diveq|sf_diveq|rotation) args+=(--set "model.quantizer.kind=$kind") ;;
    cosine) args+=(--set model.quantizer.kind=ste --set model.quantizer.codebook_dim=8
                   --set model.quantizer.options.ste.cosine_search=true) ;;
    *) die "$1: unknown kind $kind" ;;
  esac
  args+=(--set "init_from=$neutral")
}

stages_of() { case $1 in a_*) echo 3,6,12 ;; b_*) echo 2,4,8 ;; esac; }
every_stage() { case $1 in a_*) seq -s, 1 12 ;; b_*) seq -s, 1 8 ;; esac; }

for name in "$@"; do run_args "$name"; done   # every name checked before anything starts
if [ -n "${DRY_RUN:-}" ]; then   # print each run's training arguments, one line a run, and stop
  for name in "$@"; do run_args "$name"; echo "$name ${args[*]}"; done
  exit 0
fi

pids=()
train() {
  local name=$1
  run_args "$name"
  log "$name: training -> $exp/$name"
  OMP_NUM_THREADS=1 python -m codec train "${args[@]}" --out-dir "$exp/$name" --resume -q \
    > "$exp/$name.train.log" 2>&1
}
mkdir -p "$exp"
for name in "$@"; do
  [ -f "$results/$name/results.csv" ] && { log "$name: results present, skipped"; continue; }
  [ -f "$exp/$name/model/config.json" ] && continue
  train "$name" &
  pids+=($!)
  if [ ${#pids[@]} -ge "${PARALLEL:-2}" ]; then
    for pid in "${pids[@]}"; do wait "$pid" || die "a training failed (see $exp/*.train.log)"; done
    pids=()
  fi
done
for pid in "${pids[@]}"; do wait "$pid" || die "a training failed (see $exp/*.train.log)"; done

# codec eval names a system by its folder ("model"); the merged tables need the run's name
rename='NR == 1 {print; next} {sub(/^model/, k, $1); print}'
for name in "$@"; do
  [ -f "$results/$name/results.csv" ] && continue
  model=$exp/$name/model
  if [ ! -f "$model/priors.json" ]; then
    log "$name: priors"
    python -m codec priors --model "$model" --data "$data/train-clean-100" --max-files 500 --force
  fi
  log "$name: codec eval -> $exp/eval/$name"
  python -m codec eval "$model" --data "$data/test-other" --stages "$(stages_of "$name")" --opus none \
    --entropy --jobs 2 --out "$exp/eval/$name"
  mkdir -p "$results/$name"
  awk -F, -v OFS=, -v k="$name" "$rename" "$exp/eval/$name/results.csv" > "$results/$name/results.csv"
  awk -F, -v OFS=, -v k="$name" "$rename" "$exp/eval/$name/codebooks.csv" > "$results/$name/codebooks.csv"
  cp "$exp/$name/log.csv" "$results/$name/train_log.csv"
  sha256sum "$neutral/model.safetensors" | cut -d' ' -f1 > "$results/$name/neutral.sha256"
done

# The rate-quality curve at every stage count (1 to all), on CURVE_FILES (default 25) test-other
# utterances spread over the speakers: the shape between the full set's three points, at a
# quarter of the cost. Runs whose stages.csv is there are skipped; a run scored before this step
# existed gets its curve from its model in $exp, where that is still present.
for name in "$@"; do
  [ -f "$results/$name/stages.csv" ] && continue
  model=$exp/$name/model
  [ -f "$model/config.json" ] || { log "$name: no model in $exp, no stage curve"; continue; }
  log "$name: every stage count -> $exp/stages/$name"
  python -m codec eval "$model" --data "$data/test-other" --stages "$(every_stage "$name")" --opus none \
    --limit "${CURVE_FILES:-25}" --listen 0 --jobs 2 --out "$exp/stages/$name"
  mkdir -p "$results/$name"
  awk -F, -v OFS=, -v k="$name" "$rename" "$exp/stages/$name/results.csv" > "$results/$name/stages.csv"
done
