"""The hardware a run sees: device names and their resolution, usable CPU cores, native bf16, GPU memory peaks and
the machine in one line; one answer for the engine, the search and the benchmarks."""

from __future__ import annotations

import os

import torch

DEVICES = ("auto", "cpu", "cuda")


def usable_cpus() -> int:
    """CPUs this process may run on (respects affinity masks and container CPU sets where the OS reports them)."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity else os.cpu_count() or 1


def is_device_name(name: str) -> bool:
    """Whether ``name`` is auto, cpu, cuda or cuda:N (does not look for a GPU)."""
    return name in DEVICES or (name.startswith("cuda:") and name[5:].isdigit())


def check_device_name(name: str) -> None:
    """One-line ValueError unless ``name`` is auto, cpu, cuda or cuda:N (does not look for a GPU)."""
    if not is_device_name(name):
        raise ValueError(f"device {name!r} is not one of auto, cpu, cuda, cuda:N")


def resolve_device(name: str) -> torch.device:
    """The device ``name`` means here: ``auto`` picks CUDA when present; asking for an absent GPU is a ValueError."""
    check_device_name(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} requested but CUDA is not available")
        index = torch.device(name).index
        if index is not None and index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) present")
    return torch.device(name)


def describe(device: str = "cpu") -> str:
    """The machine in one line, for reports: CPU model and usable cores, or the GPU, and the torch version."""
    if device.startswith("cuda") and torch.cuda.is_available():
        what = torch.cuda.get_device_name(torch.device(device))
    else:
        model = next((line.split(":", 1)[1].strip() for line in _cpuinfo() if line.startswith("model name")), "CPU")
        what = f"{model}, {usable_cpus()} usable core(s)"
    return f"{what}; torch {torch.__version__}"


#: CPU flags (/proc/cpuinfo) of native bf16 arithmetic: AVX-512 BF16 and AMX on x86, the BF16 extension on Arm.
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")


def native_bf16_flag(cpuinfo: list[str] | None = None) -> str | None:
    """The CPU flag that makes bf16 autocast pay on this CPU, or None (bf16 is then emulated in fp32 and slower).

    Read from ``cpuinfo`` lines (default: /proc/cpuinfo; x86 lists ``flags``, Arm ``Features``).
    """
    for line in _cpuinfo() if cpuinfo is None else cpuinfo:
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags = set(value.split())
            return next((flag for flag in NATIVE_BF16_FLAGS if flag in flags), None)
    return None


def _cpuinfo() -> list[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return f.read().splitlines()
    except OSError:
        return []


def device_label(device: torch.device) -> str:
    """The device a run trained on as records name it: ``cpu``, or ``cuda:<index> (<GPU name>)``."""
    if device.type != "cuda":
        return device.type
    index = torch.cuda.current_device() if device.index is None else device.index
    return f"cuda:{index} ({torch.cuda.get_device_name(index)})"


def reset_peak_memory(device: torch.device) -> None:
    """Count the GPU memory peak from now on (see :func:`peak_memory_mb`); nothing to do on CPU."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> float | None:
    """The most GPU memory torch's tensors held since the last reset, in MiB (``torch.cuda.max_memory_allocated``);
    None on CPU, where torch keeps no such count."""
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
