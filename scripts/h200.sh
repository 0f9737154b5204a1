#!/usr/bin/env bash
# GPU verification in one device call: build with CUDA, then
#   check: pytest + `python -m harness correctness` on the suites
#   bench: `python -m harness bench` on the suites (each bench row is checked too)
#   all:   both
# and leave logs + one tarball of the run folders under $OUT.
#   run(command="bash scripts/h200.sh all box_iou,nms --modes cold,graph", carry=[".whl"])
# Packages missing on the GPU image (nvtx) travel as wheels in .whl/ (see README).
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/detbench-out}
STAGE=${1:-all}
SUITES=${2:-box_iou}
shift 2 || shift $#
mkdir -p "$OUT/runs"

source scripts/h200_setup.sh

if [ "$STAGE" = all ] || [ "$STAGE" = check ]; then
  python3 -m pytest -q -rs -p no:cacheprovider >"$OUT/pytest.log" 2>&1
  echo "pytest exit $?"; tail -4 "$OUT/pytest.log"
  python3 -m harness correctness --suite "$SUITES" --device cuda --out "$OUT/runs/correctness" >"$OUT/correctness.log" 2>&1
  echo "correctness exit $?"; grep -E "^checks:" "$OUT/correctness.log"
fi
if [ "$STAGE" = all ] || [ "$STAGE" = bench ]; then
  python3 -m harness bench --suite "$SUITES" --device cuda "$@" --out "$OUT/runs/bench" >"$OUT/bench.log" 2>&1
  echo "bench exit $?"; grep -E "^checks:" "$OUT/bench.log"
fi
tar -czf "$OUT/runs.tar.gz" -C "$OUT" runs && rm -rf "$OUT/runs"
