"""The machine a run used, in words, for reports and experiment records."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import jax


def device_description() -> str:
    """E.g. "CPU, 2 cores (AMD EPYC ...)" or "GPU NVIDIA H100 80GB HBM3 (x1)"."""
    device = jax.devices()[0]
    if device.platform == "cpu":
        name = platform.processor() or platform.machine()
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
        return f"CPU, {os.cpu_count()} cores ({name})"
    return f"{device.platform.upper()} {device.device_kind} (x{jax.device_count()})"
