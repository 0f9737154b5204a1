# Sourced by the H200 scripts (h200.sh, h200_gate.sh) with OUT set: carried wheels onto
# PYTHONPATH, the GPU's state into $OUT/gpu.txt, and the extension built with CUDA (sm_90).
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv | tee "$OUT/gpu.txt"

start=$SECONDS
if [ -n "${DETBENCH_PREBUILT:-}" ]; then
  # ops/_C built elsewhere from this same tree for this image's Python and torch (README: "An
  # extension built off the GPU"), carried in: no build time on the device.
  cp "$DETBENCH_PREBUILT" ops/ && python3 -c "import ops" || { echo "prebuilt $DETBENCH_PREBUILT does not load"; exit 1; }
  echo "build: prebuilt $DETBENCH_PREBUILT"
else
  # The image's default g++ (/opt/gcc) links its own copy of libstdc++ into the extension, and
  # then a C++ exception (every argument error) crashes Python: build with the system compiler.
  CC=/usr/bin/gcc CXX=/usr/bin/g++ TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 FORCE_CUDA=1 python3 setup.py build_ext --inplace >"$OUT/build.log" 2>&1 \
    || { tail -40 "$OUT/build.log"; exit 1; }
  echo "build: $((SECONDS - start)) s"
fi
