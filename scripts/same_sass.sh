#!/usr/bin/env bash
# Whether CUDA files compile to the same sm_90 machine code at REV as in the working tree: a
# refactor of shared headers proven not to change what the GPU runs, without GPU time.
#   bash scripts/same_sass.sh 43472ee csrc/ops/anchors/cuda/anchors_kernel.cu ...
# Prints one line per file (same / DIFFERENT, with the number of differing SASS lines); exit 1 if
# any differs. Anonymous-namespace hashes in kernel names (they encode the file's contents) are
# ignored. Needs nvcc and cuobjdump (CUDA_HOME, default /usr/local/cuda; CUOBJDUMP overrides).
set -uo pipefail
rev=$1
shift
cuda=${CUDA_HOME:-/usr/local/cuda}
cuobjdump=${CUOBJDUMP:-$cuda/bin/cuobjdump}
python=${PYTHON:-python3}
torch_include=$("$python" -c "import torch.utils.cpp_extension as e; print(' '.join('-I' + p for p in e.include_paths()))")
py_include=$("$python" -c "import sysconfig; print(sysconfig.get_paths()['include'])")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
git archive "$rev" csrc | tar -x -C "$work" || exit 2

sass() {  # sass ROOT FILE OUT
  "$cuda/bin/nvcc" -cubin -o "$3.cubin" "$1/$2" -I"$1/csrc" $torch_include -I"$py_include" \
    -DTORCH_API_INCLUDE_EXTENSION_H -DTORCH_EXTENSION_NAME=_C -D__CUDA_NO_HALF_OPERATORS__ \
    -D__CUDA_NO_HALF_CONVERSIONS__ -D__CUDA_NO_BFLOAT16_CONVERSIONS__ -D__CUDA_NO_HALF2_OPERATORS__ \
    --expt-relaxed-constexpr -O3 -std=c++20 -gencode=arch=compute_90,code=sm_90 --compiler-options -fPIC || return 1
  "$cuobjdump" -sass "$3.cubin" 2>/dev/null | sed -E 's#/\*[0-9a-f]{4}\*/##; s#/\* 0x[0-9a-f]+ \*/##; s/_GLOBAL__N__[0-9a-f]+_[0-9]+_[A-Za-z0-9_]+_cu_[0-9a-f]+(_[0-9]+)?/ANON/g' \
    | grep -v '^\s*$' >"$3"
}

status=0
for file in "$@"; do
  name=$(echo "$file" | tr / _)
  sass "$work" "$file" "$work/old_$name" && sass . "$file" "$work/new_$name" || { echo "$file: does not compile"; status=1; continue; }
  differing=$(diff "$work/old_$name" "$work/new_$name" | grep -c '^[<>]')
  if [ "$differing" -eq 0 ]; then
    echo "$file: same SASS at $rev and in the working tree ($(wc -l <"$work/new_$name") lines)"
  else
    echo "$file: DIFFERENT SASS ($differing lines differ)"
    status=1
  fi
done
exit $status
