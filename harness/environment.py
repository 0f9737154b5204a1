"""The environment record stored with every run: what ran, where, on which build."""
from __future__ import annotations

import datetime as dt
import os
import platform
import socket
import subprocess
from typing import Any

import torch

from harness import nvtx
from harness.timing import cpu_clock

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def git_commit() -> str:
    """The checkout's commit, with '+dirty' when tracked files differ from it. Outside a git
    checkout (a copied tree on a GPU machine), DETBENCH_COMMIT if set, else 'unknown'."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10).stdout.strip()

    try:
        commit = git("rev-parse", "--short=12", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        commit = ""
    if not commit:
        return os.environ.get("DETBENCH_COMMIT", "unknown")
    return commit + ("+dirty" if dirty else "")


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _package_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _gpu() -> dict[str, Any]:
    if not torch.cuda.is_available():
        return {"gpu": None, "gpu_count": 0, "driver": None}
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    driver = None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20,
        )
        driver = out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        pass
    return {
        "gpu": props.name,
        "gpu_count": torch.cuda.device_count(),
        "gpu_capability": f"{props.major}.{props.minor}",
        "gpu_sms": props.multi_processor_count,
        "gpu_memory_bytes": props.total_memory,
        "gpu_l2_bytes": props.L2_cache_size,
        "driver": driver,
    }


def capture() -> dict[str, Any]:
    import ops

    info = ops.build_info()
    return {
        "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu_name(),
        "cpu_threads": torch.get_num_threads(),
        "cpu_clock": cpu_clock()[0],
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "torchvision": _package_version("torchvision"),
        "detbench_cuda_kernels": info["built_with_cuda"],
        "detbench_cuda_version": info["cuda_version"],
        "nvtx": _package_version("nvtx") if nvtx.AVAILABLE else None,
        **_gpu(),
    }
