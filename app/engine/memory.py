"""How much memory the model's device holds: CUDA/MPS as torch reports it; on a CPU, the engine
process's resident set size out of the machine's RAM (or the cgroup limit when that is lower)."""

import logging
import os
from collections.abc import Callable

log = logging.getLogger(__name__)

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def device_memory_readers(device: str) -> tuple[Callable[[], float], Callable[[], float]]:
    """(used, total) byte readers for the model's device."""
    try:
        import torch

        if device.startswith("cuda"):
            dev = torch.device(device)
            total = torch.cuda.get_device_properties(dev).total_memory
            return (lambda: torch.cuda.memory_allocated(dev)), (lambda: total)
        if device.startswith("mps"):
            total = torch.mps.recommended_max_memory()
            return torch.mps.current_allocated_memory, (lambda: total)
    except Exception:  # a broken accelerator query must not stop start-up; report the host instead
        log.warning("cannot read %s memory; reporting the process's instead", device, exc_info=True)
    total = host_memory_total()
    return process_rss, (lambda: total)


def process_rss() -> float:
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:  # not Linux: the peak RSS is the best the standard library offers
        import resource
        import sys

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


def host_memory_total() -> float:
    """The machine's RAM, or the cgroup (container) memory limit when that is lower."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 0
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as f:
                limit = f.read().strip()
        except OSError:
            continue
        if limit.isdigit() and (total == 0 or 0 < int(limit) < total):
            total = int(limit)
        break
    return float(total)


def _malloc_trim() -> Callable[[], object] | None:
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


_TRIM = _malloc_trim()


def release_free_memory() -> None:
    """Hand the allocator's free pages back to the OS (glibc's malloc_trim). Steps allocate [rows,
    vocabulary] blocks of many sizes; without this the engine's RSS ratchets up by hundreds of MB
    over thousands of mixed requests (tests/reliability/test_soak.py). Called when the engine goes idle."""
    if _TRIM is not None:
        _TRIM(0)
