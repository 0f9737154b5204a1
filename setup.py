"""Builds `ops._C`: every C++ CPU kernel under csrc/, plus the CUDA kernels when they can be built.

CUDA kernels are built when torch is a CUDA build and a CUDA toolkit (nvcc) is found.
  FORCE_CUDA=1  build them anyway (fails if no toolkit is found)
  FORCE_CUDA=0  never build them
  TORCH_CUDA_ARCH_LIST="9.0"  target architectures (default: the visible GPU's; with no
                              GPU visible, torch's list of every architecture it supports)
"""
import glob
import os

from setuptools import setup
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.abspath(__file__))


def _cuda_wanted() -> tuple[bool, str]:
    force = os.environ.get("FORCE_CUDA")
    if force == "0":
        return False, "FORCE_CUDA=0"
    home = cpp_extension.CUDA_HOME
    # torch guesses CUDA_HOME from nvcc's path; a wrapper script (e.g. /usr/local/bin/nvcc) makes
    # it guess a folder without the toolkit's headers, which would fail deep in the build.
    toolkit = home is not None and os.path.exists(os.path.join(home, "include", "cuda_runtime_api.h"))
    missing = f"no CUDA toolkit headers under CUDA_HOME={home} (set CUDA_HOME to the toolkit, e.g. /usr/local/cuda)"
    if force == "1":
        if not toolkit:
            raise RuntimeError(f"FORCE_CUDA=1 but {missing}")
        return True, "FORCE_CUDA=1"
    import torch

    if torch.version.cuda is None:
        return False, "torch is a CPU-only build"
    if not toolkit:
        return False, missing
    return True, f"CUDA toolkit at {home}, torch CUDA {torch.version.cuda}"


def _extension():
    with_cuda, why = _cuda_wanted()
    csrc = os.path.join(ROOT, "csrc")
    sources = sorted(glob.glob(os.path.join(csrc, "**", "*.cpp"), recursive=True))
    # no -std: torch adds the standard its headers need. -fopenmp: torch's at::parallel_for is
    # inline header code that runs its body serially unless the including file is compiled with
    # OpenMP (torch's CPU build is OpenMP-parallel; without the flag every detbench CPU kernel ran
    # on one thread).
    extra = {"cxx": ["-O3", "-fopenmp"]}
    macros = []
    if with_cuda:
        sources += sorted(glob.glob(os.path.join(csrc, "**", "*.cu"), recursive=True))
        extra["nvcc"] = ["-O3", "--expt-relaxed-constexpr", "-lineinfo"]
        macros.append(("WITH_CUDA", None))
        print(f"detbench: building CPU and CUDA kernels ({why})", flush=True)
        make = cpp_extension.CUDAExtension
    else:
        print(f"detbench: building CPU kernels only ({why}); set FORCE_CUDA=1 to require CUDA", flush=True)
        make = cpp_extension.CppExtension
    sources = [os.path.relpath(s, ROOT) for s in sources]
    return make("ops._C", sources, include_dirs=[csrc], define_macros=macros, extra_compile_args=extra,
                extra_link_args=["-fopenmp"])


setup(
    ext_modules=[_extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(no_python_abi_suffix=False)},
)
