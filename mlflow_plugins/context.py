"""Runtime tags (device, device name, torch/CUDA versions) for the runs of a tvae process.

`runtime_tags()` is what the train entry point sets on its run; `TVAERunContextProvider` is the
same set registered under `mlflow.run_context_provider`, so a user's own `mlflow.start_run()` in a
process that trains with `tvae` gets it too (MLflow does not call context providers for runs
`mlflow run` creates). The commit is MLflow's own `mlflow.source.git.commit`; `git_commit` fills
it in only where MLflow could not (a console script outside the checkout). The tag names live
here, not in `tvae.contract`: MLflow imports this module in every process, and importing `tvae`
there would be a side effect on other people's runs.
"""

from __future__ import annotations

import functools
import importlib.metadata
import platform
import subprocess
import sys
from pathlib import Path

from mlflow.tracking.context.abstract_context import RunContextProvider

TAG_DEVICE = "device"
TAG_DEVICE_NAME = "device.name"
TAG_TORCH = "torch.version"
TAG_CUDA = "cuda.version"
TAG_AMP = "amp"
TAG_CONFIG_NAME = "config.name"


@functools.lru_cache(maxsize=1)
def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


@functools.lru_cache(maxsize=1)
def _gpu_name() -> str | None:
    """First GPU's name, via NVML when present (does not create a CUDA context)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            if pynvml.nvmlDeviceGetCount() > 0:
                name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(0))
                return name.decode() if isinstance(name, bytes) else str(name)
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        pass
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return None


@functools.lru_cache(maxsize=8)
def git_commit(cwd: str | None = None) -> str | None:
    """HEAD commit of the git checkout containing cwd (default: this package's), or None."""
    cwd = cwd or str(Path(__file__).resolve().parent)
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    sha = out.stdout.strip()
    return sha or None


def runtime_tags(
    device: str | None = None, device_name: str | None = None, amp: str | None = None
) -> dict[str, str]:
    """Tags describing where a run executes. Pass what the trainer resolved when known."""
    tags: dict[str, str] = {}
    torch = sys.modules.get("torch")  # importing torch here would cost every run ~3 s
    if torch is not None:
        tags[TAG_TORCH] = torch.__version__
        tags[TAG_CUDA] = torch.version.cuda or "none"
    else:
        try:
            tags[TAG_TORCH] = importlib.metadata.version("torch")
        except importlib.metadata.PackageNotFoundError:
            pass
    if device_name is None:
        if device is None or device.startswith("cuda"):
            device_name = _gpu_name()
        if device_name is None:
            device_name = _cpu_name()
    if device is None:
        device = "cuda" if _gpu_name() else "cpu"
    tags[TAG_DEVICE] = device
    tags[TAG_DEVICE_NAME] = device_name
    if amp is not None:
        tags[TAG_AMP] = amp
    return tags


class TVAERunContextProvider(RunContextProvider):
    """Adds device/torch/CUDA tags to runs started with the fluent `mlflow.start_run()` in a
    process that imported the trainer; any other process's runs are left alone."""

    def in_context(self) -> bool:
        return "tvae.train" in sys.modules

    def tags(self) -> dict[str, str]:
        return runtime_tags()
