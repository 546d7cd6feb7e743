"""The processor this process runs on: how many cores it may use, and its name."""

from __future__ import annotations

import os
import platform
from pathlib import Path

__all__ = ["available_cores", "cpu_name"]


def available_cores() -> int:
    """Cores this process may run on: its CPU affinity where the system has one (a
    container or a batch system's share), else every core of the machine."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
