"""The environment record stored with every run: what ran, where, on which build."""
from __future__ import annotations

import datetime as dt
import glob
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


def cpu_model() -> str:
    """What the model name may hide (virtual machines often report just 'AMD EPYC'): family,
    model and stepping, and the last-level cache, e.g. 'family 25 model 17 stepping 1, L3 32768K'."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("cpu family", "model", "stepping") and key not in fields:
                    fields[key] = value.strip()
                if not line.strip():
                    break  # the first processor's block is enough
    except OSError:
        return platform.machine()
    model = " ".join(f"{k.split()[-1]} {fields[k]}" for k in ("cpu family", "model", "stepping") if k in fields)
    caches = sorted(glob.glob("/sys/devices/system/cpu/cpu0/cache/index*"))
    if caches:
        try:
            with open(os.path.join(caches[-1], "level")) as f_level, open(os.path.join(caches[-1], "size")) as f_size:
                model += f", L{f_level.read().strip()} {f_size.read().strip()}"
        except OSError:
            pass
    return model or platform.machine()


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
        "cpu_model": cpu_model(),
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
