#!/usr/bin/env bash
# One device call on the H200: build with CUDA, run the tests, the correctness suites and the
# bench, and leave everything under $OUT (logs + one tarball of the run folders).
#   run(command="bash scripts/h200.sh [SUITES] [BENCH_ARGS...]", carry=[".whl"])
# Packages missing on the GPU image (nvtx) travel as wheels in .whl/ (see README).
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/detbench-out}
SUITES=${1:-box_iou}
shift || true
mkdir -p "$OUT"

if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv | tee "$OUT/gpu.txt"

start=$SECONDS
# The image's default g++ (/opt/gcc) links its own copy of libstdc++ into the extension, and
# then a C++ exception (every argument error) crashes Python: build with the system compiler.
CC=/usr/bin/gcc CXX=/usr/bin/g++ TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 FORCE_CUDA=1 python3 setup.py build_ext --inplace >"$OUT/build.log" 2>&1 \
  || { tail -40 "$OUT/build.log"; exit 1; }
echo "build: $((SECONDS - start)) s"

python3 -m pytest -q -rs -p no:cacheprovider >"$OUT/pytest.log" 2>&1
echo "pytest exit $?"; tail -15 "$OUT/pytest.log"

python3 -m harness correctness --suite "$SUITES" --device cuda --out "$OUT/runs/correctness" >"$OUT/correctness.log" 2>&1
echo "correctness exit $?"; tail -5 "$OUT/correctness.log"

python3 -m harness bench --suite "$SUITES" --device cuda "$@" --out "$OUT/runs/bench" >"$OUT/bench.log" 2>&1
echo "bench exit $?"

tar -czf "$OUT/runs.tar.gz" -C "$OUT" runs && rm -rf "$OUT/runs"
