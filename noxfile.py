"""nox sessions: tests, correctness, bench, gate, profile. Arguments after `--` go to pytest /
`python -m harness <command>`.

Two ways to run each session:
- default: a fresh virtualenv (uv when installed) with torch + torchvision from PyPI (pinned: the
  CPU baseline's), and detbench built into it (`pip install --no-build-isolation -e .`).
- system-torch mode, `nox --no-venv -s <session>`: no virtualenv and no downloads; uses the
  interpreter that runs nox, its torch (e.g. a GPU container's CUDA build), and builds the
  extension in place. For GPU machines without network.
"""
import shutil
import sys

import nox

nox.options.default_venv_backend = "uv" if shutil.which("uv") else "virtualenv"
nox.options.sessions = ["tests"]

# torch pinned to the version the committed CPU baseline was measured with: the gate compares absolute
# medians only on the same machine, torch included (regenerate the baseline when bumping it)
RUNTIME = ["torch==2.15.0", "torchvision==0.29.2", "numpy", "pandas", "rich", "nvtx", "pyarrow", "matplotlib"]
MMDET = "mmdet==3.3.0"
BUILD = ["setuptools>=69", "wheel", "ninja"]


def _system_torch(session: nox.Session) -> bool:
    return session.venv_backend == "none"


def _install(session: nox.Session, *extra: str) -> str:
    """Dependencies plus the built extension; returns the python to run things with."""
    if _system_torch(session):
        session.log("system-torch mode: using this interpreter's torch, building ops._C in place")
        session.run(sys.executable, "setup.py", "build_ext", "--inplace", external=True)
        return sys.executable
    session.install(*RUNTIME, *BUILD, *extra)
    # mmdet's gaussian_target.py is a reference (loaded by path; the package itself needs mmcv).
    session.install("--no-deps", MMDET)
    session.install("--no-build-isolation", "-e", ".")
    return "python"


@nox.session
def tests(session: nox.Session) -> None:
    """pytest over tests/ (CUDA tests skip with their reason where no GPU is visible)."""
    python = _install(session, "pytest")
    session.run(python, "-m", "pytest", *session.posargs, external=True)


def _harness(session: nox.Session, command: str) -> None:
    session.run(_install(session), "-m", "harness", command, *session.posargs, external=True)


@nox.session
def correctness(session: nox.Session) -> None:
    """python -m harness correctness [args]: every implementation against the reference."""
    _harness(session, "correctness")


@nox.session
def bench(session: nox.Session) -> None:
    """python -m harness bench [args]: check, time, and write a report under reports/runs/."""
    _harness(session, "bench")


@nox.session
def gate(session: nox.Session) -> None:
    """python -m harness gate [args]: a fresh run (or --run DIR) against reports/baselines/<device>."""
    _harness(session, "gate")


@nox.session
def profile(session: nox.Session) -> None:
    """python -m harness profile --suite S --case C --impl I [--tool ncu|nsys]: one call under Nsight."""
    _harness(session, "profile")
