#!/usr/bin/env bash
# `make test`: the whole suite as three pytest processes side by side. The Ray tier (`-m slow`: local Ray clusters,
# jobs, Serve) spends part of its time waiting on process starts, Ray's scheduling and health checks, so it runs as
# two halves (SA_RAY_TEST_HALF=1: the align-job tests, =2: the rest; tests/conftest.py), each with a Ray instance
# of its own (its own RAY_TMPDIR): alone, the tier kept the two cores 1.2-1.6 busy. The unit tier (no Ray:
# SA_RAY_TEST_FAST=1 fails a test that starts it) fills what is left, at the lowest priority (nice 19): Ray runs
# its workers at nice 15, so a unit tier at 0 would take the cores from them (SCHED_IDLE did no better than
# nice 19: docs/performance.md). The second half's report and the unit tier's follow the first half's. Arguments
# go to all three (a path or -k that selects no test of one is fine; none selecting any test fails, as pytest does).
#
#   bash scripts/test.sh --unit [pytest args]   # the unit tier alone, in the foreground: `make test-fast`
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
UNIT_TIER=(env SA_RAY_TEST_FAST=1 "$PY" -m pytest -q -ra -m "not slow" -o cache_dir=.pytest_cache/unit)
if [ "${1:-}" = --unit ]; then
  shift
  exec "${UNIT_TIER[@]}" "$@"
fi
RAY_TIER=("$PY" -m pytest -q -ra --durations=30 -m slow)
# each half's Ray sessions (their logs) stay in $ray_tmp/1 and /2 after the run, as /tmp/ray's would; a RAY_TMPDIR
# that does not exist yet is made, as Ray makes it
mkdir -p "${RAY_TMPDIR:-/tmp}" && ray_tmp=$(mktemp -d "${RAY_TMPDIR:-/tmp}/sa-ray-test.XXXX") || exit 1
logs=$(mktemp -d) || exit 1
pids=()
trap 'rm -rf "$logs"; [ ${#pids[@]} -eq 0 ] || kill "${pids[@]}" 2>/dev/null' EXIT

nice -n 19 "${UNIT_TIER[@]}" "$@" >"$logs/unit" 2>&1 &
pids+=($!)
SA_RAY_TEST_HALF=2 RAY_TMPDIR="$ray_tmp/2" "${RAY_TIER[@]}" -o cache_dir=.pytest_cache/ray2 "$@" >"$logs/ray2" 2>&1 &
pids+=($!)
echo "make test: the Ray tier's second half and the unit tier run beside this first half; their reports follow"
SA_RAY_TEST_HALF=1 RAY_TMPDIR="$ray_tmp/1" "${RAY_TIER[@]}" "$@"
ray1_rc=$?
wait "${pids[1]}"
ray2_rc=$?
echo
echo "=== the Ray tier's second half (SA_RAY_TEST_HALF=2 pytest -m slow), run beside the first:"
cat "$logs/ray2"
wait "${pids[0]}"
unit_rc=$?
pids=()
echo
echo "=== the unit tier (SA_RAY_TEST_FAST=1 pytest -m 'not slow'), run beside the Ray tier:"
cat "$logs/unit"

# pytest's exit 5: no test selected. Fine for some, not for all three.
rcs=("$ray1_rc" "$ray2_rc" "$unit_rc")
failed=0 none=0
for rc in "${rcs[@]}"; do
  if [ "$rc" -ne 0 ] && [ "$rc" -ne 5 ]; then failed=1; fi
  if [ "$rc" -eq 5 ]; then none=$((none + 1)); fi
done
if [ "$failed" -eq 1 ]; then
  echo "make test: FAILED (the Ray tier's halves exit $ray1_rc and $ray2_rc, the unit tier exit $unit_rc)" >&2
  exit 1
fi
if [ "$none" -eq 3 ]; then
  echo "make test: no test selected in any of the three" >&2
  exit 5
fi
