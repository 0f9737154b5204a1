"""Loads the compiled extension `ops._C`, which registers the `torch.ops.detbench` operators,
and holds what concerns the build as a whole."""
import os
import warnings

import torch

try:
    from ops import _C
except ImportError as e:
    raise ImportError(
        "detbench's compiled extension ops._C is not built or failed to load "
        f"({e}). Build it from the repository root with `pip install --no-build-isolation -e .` "
        "(or `python setup.py build_ext --inplace`); see README.md."
    ) from e

BUILT_WITH_CUDA: bool = bool(_C.built_with_cuda)

_REBUILD = "rebuild with `FORCE_CUDA=1 pip install --no-build-isolation -e .` (needs nvcc: set CUDA_HOME or put it on PATH)"


def build_info() -> dict:
    """What this build of detbench is: whether it has CUDA kernels, the CUDA runtime version it was
    compiled against (CUDART_VERSION, e.g. 13000; None for a CPU-only build) and torch's version."""
    return {
        "built_with_cuda": BUILT_WITH_CUDA,
        "cuda_version": _C.cuda_version,
        "torch_version": torch.__version__,
    }


def set_validation(enabled: bool) -> None:
    """Turn validation mode on or off for the whole process.

    In validation mode the ops also run the checks that need a device->host sync (e.g. for
    non-finite coordinates in CUDA inputs); it is off by default, which keeps CUDA calls free of
    syncs and capturable in CUDA graphs. The environment variable DETBENCH_VALIDATE=1 turns it on
    at import."""
    _C.set_validation(bool(enabled))


def validation_enabled() -> bool:
    """Whether validation mode is on."""
    return _C.validation_enabled()


def require_kernels(op_name: str, *tensors: torch.Tensor) -> None:
    """Raise a clear error if `tensors` need kernels this build lacks (CUDA tensors, CPU-only build)."""
    if BUILT_WITH_CUDA:
        return
    for t in tensors:
        if t.device.type == "cuda":
            raise RuntimeError(
                f"detbench.{op_name}: got CUDA tensors but detbench was built without CUDA kernels; {_REBUILD}"
            )


if os.environ.get("DETBENCH_VALIDATE") == "1":
    set_validation(True)

if not BUILT_WITH_CUDA and torch.cuda.is_available():
    warnings.warn(
        f"detbench is a CPU-only build but a CUDA device is visible: its ops will reject CUDA tensors; {_REBUILD}",
        stacklevel=2,
    )
