#!/usr/bin/env bash
# LibriSpeech recipe, Kaldi / ESPnet style: prepare -> train -> evaluate -> summarise.
#
#   bash egs/librispeech/run.sh                          # every stage, every recipe
#   bash egs/librispeech/run.sh --stage 2 --stop-stage 2 --recipes "simvq ema"
#   bash egs/librispeech/run.sh --launcher "accelerate launch --num_processes 8"
#
# Stages: 0 check the data, 1 write manifests, 2 train each recipe, 3 evaluate every trained
# model and Opus on the validation subset (`codec eval`), 4 summarise the training logs. Run from anywhere; paths are relative to the repository root.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
stage=0
stop_stage=100
librispeech=${LIBRISPEECH:-$repo/../shared/data/LibriSpeech}
train_subsets="train-clean-100"
valid_subsets="test-other"
recipes="ste ema simvq diveq sf_diveq hybrid"
exp=exp/librispeech
manifests=data/manifests
launcher=""                 # e.g. "accelerate launch --num_processes 8"; empty: one process
train_args=""               # extra arguments for `codec train`, e.g. "--set total_steps=1000"
eval_args="--stages 1,2,4,8,12 --opus 6,8,12"   # arguments for `codec eval` (stage 3)

usage() {
  cat <<USAGE
usage: $0 [--stage N] [--stop-stage M] [--librispeech DIR] [--recipes "ste ema ..."]
          [--train-subsets "train-clean-100 ..."] [--valid-subsets "test-other"]
          [--exp DIR] [--manifests DIR] [--launcher CMD] [--train-args ARGS] [--eval-args ARGS]
stages: 0 check data | 1 manifests | 2 train | 3 evaluate (codec eval -> EXP/eval) | 4 summarise
defaults: --librispeech \$LIBRISPEECH or ../shared/data/LibriSpeech, --recipes "$recipes"
USAGE
}

while [ $# -gt 0 ]; do
  case "$1" in
    --stage) stage=$2; shift 2 ;;
    --stop-stage|--stop_stage) stop_stage=$2; shift 2 ;;
    --librispeech) librispeech=$2; shift 2 ;;
    --recipes) recipes=$2; shift 2 ;;
    --train-subsets) train_subsets=$2; shift 2 ;;
    --valid-subsets) valid_subsets=$2; shift 2 ;;
    --exp) exp=$2; shift 2 ;;
    --manifests) manifests=$2; shift 2 ;;
    --launcher) launcher=$2; shift 2 ;;
    --train-args) train_args=$2; shift 2 ;;
    --eval-args) eval_args=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "run.sh: error: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

cd "$repo"
log() { echo "[$(date '+%H:%M:%S')] stage $1: $2" >&2; }
if [ -z "$launcher" ]; then train_cmd=(python -m codec train); else read -r -a train_cmd <<< "$launcher -m codec train"; fi

if [ "$stage" -le 0 ] && [ "$stop_stage" -ge 0 ]; then
  log 0 "checking LibriSpeech at $librispeech"
  for s in $train_subsets $valid_subsets; do
    n=$( (find "$librispeech/$s" -name '*.flac' 2>/dev/null || true) | wc -l)
    if [ "$n" -eq 0 ]; then
      echo "run.sh: error: no FLAC files under $librispeech/$s (set LIBRISPEECH or --librispeech)" >&2; exit 2
    fi
    log 0 "$s: $n utterances"
  done
fi

if [ "$stage" -le 1 ] && [ "$stop_stage" -ge 1 ]; then
  log 1 "writing manifests to $manifests"
  # shellcheck disable=SC2086
  python tools/prepare_librispeech.py --root "$librispeech" --subsets $train_subsets $valid_subsets --out "$manifests"
fi

as_list() { local out=""; for s in "$@"; do out="$out${out:+, }$manifests/$s.tsv"; done; echo "[$out]"; }

if [ "$stage" -le 2 ] && [ "$stop_stage" -ge 2 ]; then
  for r in $recipes; do
    log 2 "training $r -> $exp/$r"
    # --resume: a re-run continues an interrupted training instead of refusing.
    # shellcheck disable=SC2086
    "${train_cmd[@]}" "recipes/$r.yaml" --out-dir "$exp/$r" --resume \
      --set "data.train_manifest=$(as_list $train_subsets)" \
      --set "data.valid_manifest=$(as_list $valid_subsets)" $train_args
  done
fi

if [ "$stage" -le 3 ] && [ "$stop_stage" -ge 3 ]; then
  models=()
  for r in $recipes; do
    if [ -f "$exp/$r/model/config.json" ]; then models+=("$exp/$r/model"); else log 3 "no model for $r yet; skipped"; fi
  done
  if [ ${#models[@]} -eq 0 ]; then
    echo "run.sh: error: no trained model under $exp (run stage 2 first)" >&2; exit 2
  fi
  for s in $valid_subsets; do
    log 3 "codec eval on $s -> $exp/eval/$s"
    # shellcheck disable=SC2086
    python -m codec eval "${models[@]}" --data "$librispeech/$s" --out "$exp/eval/$s" $eval_args
  done
fi

if [ "$stage" -le 4 ] && [ "$stop_stage" -ge 4 ]; then
  log 4 "summary of the last validation of each recipe"
  python - "$exp" $recipes <<'PY'
import csv, sys
from pathlib import Path
exp, recipes = Path(sys.argv[1]), sys.argv[2:]
print(f"{'recipe':<10} {'step':>7} {'loss':>7} {'pesq':>5}  per-stage utilisation (validation set)")
for r in recipes:
    path = exp / r / "log.csv"
    rows = [x for x in csv.DictReader(path.open())] if path.is_file() else []
    rows = [x for x in rows if x["split"] == "valid"]
    if not rows:
        print(f"{r:<10} (no validation yet)")
        continue
    x = rows[-1]
    util = " ".join(f"{float(x[k]):.2f}" for k in x if k.endswith("_utilisation") and x[k])
    pesq = f"{float(x['pesq']):.2f}" if x["pesq"] else "-"
    print(f"{r:<10} {x['step']:>7} {float(x['loss']):>7.3f} {pesq:>5}  {util}")
PY
fi
