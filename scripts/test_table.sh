#!/bin/bash
# docs/results.md's opening table: the base and every arm's version 1 on the TEST half, once, at the base's best dev
# decoding (temperature 0.4), 120 + 40 utterances at seed 0, each arm paired with the base sample by sample.
#
#   bash scripts/test_table.sh          # or: make arms-test
#   bash scripts/test_table.sh eval.workers=1   # overrides for every evaluation (not the decoding: see below)
#   BASE_TEMPERATURE=0.6 bash scripts/test_table.sh   # the test decoding, if the base's best on dev were another
#
# Needs the arms trained on dev: `make arms` (runs/arms/dev) and the more-prompts arms (runs/arms-more/dev, the
# commands in docs/results.md "More prompts"). Every arm's adapter is evaluated on the held-out sentences of the
# default corpus (RUN_DIR: the same held-out set whatever the align pool's size), each evaluation once: a file already
# written under OUT is read, not evaluated again (delete it to re-run).
#
#   OWN_DECODING=1 bash scripts/test_table.sh   # then a second table: each arm at its own best decoding
#
# OWN_DECODING=1: the protocol's other half. Each arm's decoding is chosen on dev as the base's was
# (`jobs.tune_decoding` over the temperatures DECODINGS, 120 + 40 utterances at SEEDS=2 seeds; OUT/dev/<arm>.json), then
# evaluated on test once at that decoding; the second table pairs them, and the base at temperature 1, with the base
# at its own best (0.4).
set -euo pipefail
PY=${PY:-.venv/bin/python}
RUN_DIR=${RUN_DIR:-runs/tiny}
OUT=${OUT:-runs/arms/test}
ARMS=${ARMS:-"runs/arms/dev/sft runs/arms/dev/rpo-sftdom runs/arms/dev/corr-dpo runs/arms/dev/corr-sft
               runs/arms-more/dev/sft runs/arms-more/dev/rpo"}
# the base's best on dev (docs/results.md), spelled as `jobs.tune_decoding` writes a best decoding
TEST_DECODING=$($PY -c '
import sys
from jobs.tune_decoding import decoding, overrides
from sa_ray.sampling import SamplingConfig
print(overrides(decoding(SamplingConfig(temperature=float(sys.argv[1])))))' "${BASE_TEMPERATURE:-0.4}")
# shellcheck disable=SC2206 # the decoding is several overrides
TEST=(--base checkpoints/base --no-ceiling run_dir="$RUN_DIR" eval.split=test eval.utterances=120 eval.gap_utterances=0
      $TEST_DECODING "$@")
for arm in $ARMS; do
  if [ ! -d "$arm/align/adapters/v1" ]; then
    echo "no adapter $arm/align/adapters/v1: train the arm first (make arms)" >&2
    exit 2
  fi
done
mkdir -p "$OUT"
records=()
evaluate() {  # evaluate <out file> [eval.* overrides] [--adapter <dir>]
  local out=$1
  shift
  [ -f "$out" ] || $PY -m jobs.evaluate "${TEST[@]}" "$@" --out "$out"
  records+=("$out")
}
name_of() { local name=${1#runs/}; echo "${name//\//-}"; }
evaluate "$OUT/base.json"
for arm in $ARMS; do
  evaluate "$OUT/$(name_of "$arm").json" --adapter "$arm/align/adapters/v1"
done
echo "=== on test, against the base (first row): ${ARMS//[[:space:]]/ }"
$PY -m analysis.wer_changes "${records[@]}"
[ "${OWN_DECODING:-0}" = 1 ] || exit 0

DECODINGS=${DECODINGS:-0.4,0.5,0.6,0.8,1.0}
SEEDS=${SEEDS:-2}  # the base's search had two sampling seeds
DEV=(--base checkpoints/base run_dir="$RUN_DIR" eval.utterances=120 eval.seeds="$SEEDS" eval.gap_utterances=0 "$@")
records=("$OUT/base.json")
evaluate "$OUT/base-t1.0.json" eval.temperature=1.0
for arm in $ARMS; do
  tuned=$OUT/dev/$(name_of "$arm").json
  [ -f "$tuned" ] || $PY -m jobs.tune_decoding "${DEV[@]}" --temperature "$DECODINGS" \
    --adapter "$arm/align/adapters/v1" --out "$tuned"
  best=$($PY -c 'import json, sys; print(json.load(open(sys.argv[1]))["best"])' "$tuned")
  if [ "$best" = "$TEST_DECODING" ]; then  # the first table's evaluation is this one
    records+=("$OUT/$(name_of "$arm").json")
  else
    tag=${best//eval./}
    # shellcheck disable=SC2086 # best is several overrides
    evaluate "$OUT/$(name_of "$arm")-${tag// /,}.json" $best --adapter "$arm/align/adapters/v1"
  fi
done
echo "=== on test, each at its own best dev decoding, against the base at its own (first row; then the base at T 1)"
$PY -m analysis.wer_changes "${records[@]}"
