"""What this process runs on: device, CPU threads, memory. Detected once, printed once, saved.

Device ``auto`` picks cuda, then mps (Apple), then cpu. Torch CPU threads: what was asked
(``--torch_threads``), else 1 on machines with 4 cores or fewer, else 4. Small networks gain
little from more threads, and on a busy small machine extra threads collapse throughput (measured
here: 2 torch threads on 2 busy cores ran a DQN update 30x slower than 1 thread).
"""

from __future__ import annotations

import os
import platform
import sys
from dataclasses import asdict, dataclass
from typing import Any

SMALL_MACHINE_CORES = 4
THREADS_ON_LARGE_MACHINES = 4


@dataclass(frozen=True)
class RuntimeInfo:
    """The machine as this process sees it."""

    device: str  # "cpu", "cuda", "cuda:0", "mps"
    device_name: str  # "CPU", "NVIDIA H200", "Apple MPS"
    torch_threads: int
    cpu_count: int  # cores this process may use
    memory_gb: float | None  # total RAM, None when unknown
    gpu_memory_gb: float | None
    torch_version: str
    python: str
    platform: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        """One line for the log."""
        mem = f"{self.memory_gb:.1f} GiB RAM" if self.memory_gb else "RAM unknown"
        gpu = f", {self.gpu_memory_gb:.1f} GiB GPU memory" if self.gpu_memory_gb else ""
        return (f"runtime: device {self.device} ({self.device_name}{gpu}), {self.cpu_count} CPU "
                f"cores, {self.torch_threads} torch thread{'s' if self.torch_threads != 1 else ''}"
                f", {mem}, torch {self.torch_version}, python {self.python}")


def cpu_count() -> int:
    """Cores this process may run on (affinity / cgroup-aware where the OS tells)."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    if quota is not None:
        n = max(1, min(n, quota))
    return max(1, n)


def _cgroup_cpu_quota() -> int | None:
    """CPUs allowed by a cgroup v2 quota (containers), rounded up; None if unlimited."""
    try:
        with open("/sys/fs/cgroup/cpu.max", encoding="ascii") as fh:
            quota, period = fh.read().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    try:
        return max(1, -(-int(quota) // int(period)))
    except (ValueError, ZeroDivisionError):
        return None


def memory_gb() -> float | None:
    """Total physical memory in GiB (None when the OS does not say)."""
    try:
        pages = os.sysconf("SC_PHYS_PAGES")
        size = os.sysconf("SC_PAGE_SIZE")
        if pages > 0 and size > 0:
            return pages * size / 2**30
    except (AttributeError, ValueError, OSError):
        pass
    return None


def cpu_model() -> str:
    """The CPU's model name ("AMD EPYC 7R13 Processor", "Intel(R) Xeon(R) Platinum 8488C"):
    ``/proc/cpuinfo`` on Linux, ``sysctl`` on macOS, else what ``platform`` says; the key of
    a CPU throughput profile (engine.profile)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "cpu model") and value.strip():
                    return " ".join(value.split())
    except OSError:
        pass
    if sys.platform == "darwin":
        import subprocess

        try:
            out = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"],
                                 capture_output=True, text=True, timeout=5).stdout.strip()
            if out:
                return out
        except (OSError, subprocess.SubprocessError):
            pass
    return platform.processor() or platform.machine() or "CPU"


def default_threads(cores: int) -> int:
    """Torch threads when none are asked for."""
    return 1 if cores <= SMALL_MACHINE_CORES else THREADS_ON_LARGE_MACHINES


def pick_device(requested: str = "auto") -> str:
    """``auto`` -> cuda, else mps, else cpu; an explicit device that is not there is an error."""
    import torch

    cuda = torch.cuda.is_available()
    mps = bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()
    if requested == "auto":
        return "cuda" if cuda else "mps" if mps else "cpu"
    if requested.startswith("cuda") and not cuda:
        raise RuntimeError("--device cuda: no CUDA GPU is available to torch here "
                           f"(torch {torch.__version__}); use --device cpu or auto")
    if requested == "mps" and not mps:
        raise RuntimeError("--device mps: Apple MPS is not available here; use cpu or auto")
    return requested


def set_threads(threads: int = 0) -> int:
    """Set torch's CPU threads (0 = the default for this machine); returns the number set."""
    import torch

    n = threads if threads > 0 else default_threads(cpu_count())
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(1 if n == 1 else min(n, 2))
    except RuntimeError:  # only settable before any parallel work has run; harmless then
        pass
    return n


def detect(device: str = "auto", threads: int = 0) -> RuntimeInfo:
    """Pick the device, set torch's threads, and describe the machine."""
    import torch

    dev = pick_device(device)
    n_threads = set_threads(threads)
    name, gpu_mem = "CPU", None
    if dev.startswith("cuda"):
        index = torch.device(dev).index or 0
        props = torch.cuda.get_device_properties(index)
        name, gpu_mem = props.name, props.total_memory / 2**30
    elif dev == "mps":
        name = "Apple MPS"
    else:
        name = cpu_model()
    return RuntimeInfo(device=dev, device_name=name, torch_threads=n_threads,
                       cpu_count=cpu_count(), memory_gb=memory_gb(), gpu_memory_gb=gpu_mem,
                       torch_version=torch.__version__, python=sys.version.split()[0],
                       platform=platform.platform(terse=True))
