#!/bin/bash
# docs/results.md's opening table: the base and every arm's version 1 on the TEST half, once, at the base's best dev
# decoding (temperature 0.4), 120 + 40 utterances at seed 0, each arm paired with the base sample by sample.
#
#   bash scripts/test_table.sh          # or: make arms-test
#
# Needs the arms trained on dev: `make arms` (runs/arms/dev) and the more-prompts arms (runs/arms-more/dev, the
# commands in docs/results.md "More prompts"). Every arm's adapter is evaluated on the held-out sentences of the
# default corpus (RUN_DIR: the same held-out set whatever the align pool's size), each evaluation once: a file already
# written under OUT is read, not evaluated again (delete it to re-run).
set -euo pipefail
PY=${PY:-.venv/bin/python}
RUN_DIR=${RUN_DIR:-runs/tiny}
OUT=${OUT:-runs/arms/test}
ARMS=${ARMS:-"runs/arms/dev/sft runs/arms/dev/rpo-sftdom runs/arms/dev/corr-dpo runs/arms/dev/corr-sft
               runs/arms-more/dev/sft runs/arms-more/dev/rpo"}
TEST=(--base checkpoints/base --no-ceiling run_dir="$RUN_DIR" eval.split=test eval.utterances=120
      eval.gap_utterances=0 eval.temperature=0.4)
for arm in $ARMS; do
  [ -d "$arm/align/adapters/v1" ] || { echo "no adapter $arm/align/adapters/v1: train the arm first (make arms)" >&2; exit 2; }
done
mkdir -p "$OUT"
records=()
evaluate() {  # evaluate <out file> [--adapter <dir>]
  local out=$1
  shift
  [ -f "$out" ] || $PY -m jobs.evaluate "${TEST[@]}" "$@" --out "$out"
  records+=("$out")
}
evaluate "$OUT/base.json"
for arm in $ARMS; do
  name=${arm#runs/}
  evaluate "$OUT/${name//\//-}.json" --adapter "$arm/align/adapters/v1"
done
echo "=== on test, against the base (first row): ${ARMS//[[:space:]]/ }"
$PY -m analysis.wer_changes "${records[@]}"
