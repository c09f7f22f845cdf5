"""What machine a figure came from: recorded next to trained weights and printed by every benchmark."""
from __future__ import annotations

import os
import platform
from typing import Any


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def machine_info(shared: bool | None = None) -> dict[str, Any]:
    """CPU model, cores, torch threads/version, OS, Python, accelerator; ``shared``: other jobs were running."""
    import torch  # heavy: the oracle/rewards benchmarks import machine without torch

    info = {"cpu": cpu_model(), "logical_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "os": f"{platform.system()} {platform.release()}", "python": platform.python_version(),
            "torch": torch.__version__, "device": "cpu"}
    if shared is not None:
        info["shared_with_other_jobs"] = shared
    if torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name(0)
    return info


def machine_line(info: dict[str, Any] | None = None) -> str:
    """``machine_info()`` as the one line a benchmark prints."""
    m = info or machine_info()
    return (f"{m['cpu']}, {m['logical_cores']} logical cores, {m['os']}, Python {m['python']}, torch {m['torch']}, "
            f"{m['torch_threads']} torch threads, device {m['device']}")
