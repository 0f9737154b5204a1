#!/usr/bin/env bash
# The regression gate on the H200 in one device call: build with CUDA, then stages
#   baseline: full bench of every suite -> reports/baselines/h200.{csv,json} (copied to $OUT/baselines)
#   aa:       a fresh gate run against that baseline (A/A: must pass)
#   slowed:   the planted-slowdown and A/A tests of tests/test_gate.py on CUDA (must pass: the gate
#             fails the slowed implementation, exit 1, and passes the A/A pair)
#   profile:  one box_iou case under ncu (report in $OUT/runs/profile)
#   all:      every stage, in that order
#   run(command="bash scripts/h200_gate.sh all", carry=[".whl"], timeout_s=600)
# Extra arguments go to the baseline's and the A/A run's bench (e.g. --suite box_iou,nms). The
# full baseline takes more than one 10-minute call: measure it in suite groups, one call each,
# copying $OUT/baselines/h200.* into reports/baselines/ between calls:
#   bash scripts/h200_gate.sh baseline --suite box_iou,nms,segmented_nms
#   bash scripts/h200_gate.sh baseline --merge --suite decode_boxes,gaussian_focal_loss,...
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/detbench-out}
STAGE=${1:-all}
shift || true
mkdir -p "$OUT/runs" "$OUT/baselines"

source scripts/h200_setup.sh

stage() { [ "$STAGE" = all ] || [ "$STAGE" = "$1" ]; }
if stage baseline; then
  t=$SECONDS
  python3 -m harness gate --device cuda --update-baseline --min-time 0.01 --timeout 1 "$@" \
    --out "$OUT/runs/baseline" >"$OUT/baseline.log" 2>&1
  echo "baseline exit $? ($((SECONDS - t)) s)"; tail -2 "$OUT/baseline.log"
  cp reports/baselines/h200.* "$OUT/baselines/" 2>/dev/null
fi
if stage aa; then
  t=$SECONDS
  python3 -m harness gate --device cuda "$@" --out "$OUT/runs/aa" >"$OUT/aa.log" 2>&1
  echo "A/A gate exit $? ($((SECONDS - t)) s)"; grep -E "^gate (passed|FAILED)" "$OUT/aa.log"
fi
if stage slowed; then
  python3 -m pytest -q -rs -p no:cacheprovider tests/test_gate.py -k cuda >"$OUT/slowed.log" 2>&1
  echo "planted-slowdown tests exit $?"; tail -3 "$OUT/slowed.log"
fi
if stage profile; then
  python3 -m harness profile --suite box_iou --case shape=100x200000,content=clustered --impl detbench \
    --dtype float32 --tool ncu --out "$OUT/runs/profile" >"$OUT/profile.log" 2>&1
  echo "profile exit $?"; grep -E "profiler command|report:|profiled one call|not installed" "$OUT/profile.log"
fi
tar -czf "$OUT/runs.tar.gz" -C "$OUT" runs && rm -rf "$OUT/runs"
