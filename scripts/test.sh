#!/usr/bin/env bash
# `make test`: the whole suite as its two tiers side by side. The Ray tier (`-m slow`: local Ray clusters, jobs,
# Serve) spends part of its time waiting on process starts, Ray's scheduling and health checks; the unit tier
# (no Ray: SA_RAY_TEST_FAST=1 fails a test that starts it) uses those idle cores, at the lowest priority (nice 19):
# Ray runs its workers at nice 15, so a unit tier at 0 would take the cores from them (SCHED_IDLE did no better
# than nice 19: docs/performance.md). Its output follows the Ray tier's. Arguments go to both (a path or -k that
# selects no test of one tier is fine; neither selecting any test fails, as pytest does).
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
unit_log=$(mktemp) unit=""
trap 'rm -f "$unit_log"; [ -z "$unit" ] || kill "$unit" 2>/dev/null' EXIT

nice -n 19 "${UNIT_TIER[@]}" "$@" >"$unit_log" 2>&1 &
unit=$!
echo "make test: the unit tier runs beside the Ray tier; its report follows this one"
"$PY" -m pytest -q -ra --durations=30 -m slow "$@"
ray_rc=$?
wait "$unit"
unit_rc=$?
echo
echo "=== the unit tier (SA_RAY_TEST_FAST=1 pytest -m 'not slow'), run beside the Ray tier:"
cat "$unit_log"

# pytest's exit 5: no test selected. Fine for one tier, not for both.
failed() { [ "$1" -ne 0 ] && [ "$1" -ne 5 ]; }
if failed "$ray_rc" || failed "$unit_rc"; then
  echo "make test: FAILED (Ray tier exit $ray_rc, unit tier exit $unit_rc)" >&2
  exit 1
fi
if [ "$ray_rc" -eq 5 ] && [ "$unit_rc" -eq 5 ]; then
  echo "make test: no test selected in either tier" >&2
  exit 5
fi
