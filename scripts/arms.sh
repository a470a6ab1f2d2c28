#!/bin/bash
# The evidence issue's arms side by side: one align iteration each from the same base, the same prompts and
# learner budget, evaluated on SPLIT (dev to choose; test once, to confirm what dev chose). The base is
# evaluated once (by the first arm) and its record shared, so every arm is paired with the same base samples.
#
#   bash scripts/arms.sh                      # after `make demo` (runs/tiny holds the prepared data)
#   SPLIT=test ARMS="sft rpo-sftdom" bash scripts/arms.sh eval.seeds=2
#   python -m analysis.wer_changes --run runs/arms/dev/sft ...   # or read each run's printed table
#
# Each arm is its own run_dir (OUT/<arm>, OUT=runs/arms/<split> by default; the prepared data and codec linked from
# DATA_RUN) and its own MLflow run (name <PREFIX>-<arm>): `python -m jobs.compare` and the MLflow UI put them side by
# side. `make compare-methods` runs every method this way (OUT=runs/methods, PREFIX=method).
set -euo pipefail
PY=${PY:-.venv/bin/python}
CONFIG=${CONFIG:-configs/tiny.yaml}
BASE=${BASE:-checkpoints/base}
DATA_RUN=${DATA_RUN:-runs/tiny}
SPLIT=${SPLIT:-dev}
ARMS=${ARMS:-"sft rpo-sftdom corr-dpo corr-sft"}
PREFIX=${PREFIX:-arm}            # MLflow run names <PREFIX>-<arm> (`make compare-methods`: method-)
OUT=${OUT:-runs/arms/$SPLIT}

# The loss every arm's record in docs/results.md was measured with (the defaults of the time; the defaults are now
# rpo-sftdom's): an arm's own settings come after it and win.
MEASURED_WITH="align.beta=0.1 align.length_normalize=false"

arm_settings() {
  case $1 in
    sft) echo "align.method=sft" ;;                          # the control: SFT on the golden targets
    rpo) echo "align.method=rpo" ;;                          # the earlier demo's loss: summed logprobs, beta 0.1
    rpo-sftdom) echo "align.method=rpo align.beta=0.01 align.length_normalize=true" ;;  # the published recipes (the demo's)
    corr-dpo) echo "align.pairs=corrections align.method=dpo" ;;  # the margin on the first wrong decision only
    corr-sft) echo "align.pairs=corrections align.method=sft" ;;  # SFT on the same corrections
    # every method of `make compare-methods` (golden pairs where a method takes pairs; the rollout budget of the
    # others, 256 samples, as 64 prompts x 4 samples rewarded by their phones for the online ones)
    dpo | ipo | simpo | coh) echo "align.method=$1" ;;
    cdpo) echo "align.method=cdpo align.label_smoothing=0.1" ;;  # (label smoothing 0 is dpo)
    grpo | ppo) echo "align.method=$1 align.reward=phones align.samples_per_prompt=4 align.prompts_per_iteration=64" ;;
    *) echo "unknown arm $1 (sft rpo rpo-sftdom corr-dpo corr-sft dpo cdpo ipo simpo coh grpo ppo)" >&2; exit 2 ;;
  esac
}

first=""
for arm in $ARMS; do
  settings="$MEASURED_WITH $(arm_settings "$arm")"
  dir=$OUT/$arm
  mkdir -p "$dir/align/records"
  # jobs.align reads the codec from <run_dir>/codec (a mel_kmeans codec is loaded from there, never from
  # codec.path, which only `prepare` reads; the base's lineage fingerprint hashes it): linked, with the data
  for sub in data codec; do [ -e "$dir/$sub" ] || ln -s "$(realpath "$DATA_RUN/$sub")" "$dir/$sub"; done
  if [ -n "$first" ] && [ ! -f "$dir/align/records/iter_0.json" ]; then
    cp "$OUT/$first/align/records/iter_0.json" "$dir/align/records/"  # the base, evaluated once
  fi
  echo "=== arm $arm: $settings"
  # shellcheck disable=SC2086 # settings are several overrides
  $PY -m jobs.align --config "$CONFIG" run_dir="$dir" name="$PREFIX-$arm" align.base_model="$BASE" \
    align.iterations=1 eval.split="$SPLIT" eval.utterances=120 eval.gap_utterances=0 \
    $settings "$@"
  first=${first:-$arm}
done
echo "=== the arms side by side ($SPLIT)"
$PY -m analysis.arms_table "$OUT"
