"""One description of the machine a benchmark ran on: CPU model, cores, Python, torch and GPU when present."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def describe(torch_info: bool = True) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    parts = [f"{cpu}, {os.cpu_count()} cores", f"Python {platform.python_version()}"]
    if torch_info:
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
        parts.append(f"torch {torch.__version__} ({torch.get_num_threads()} threads), {gpu}")
    return ", ".join(parts)
