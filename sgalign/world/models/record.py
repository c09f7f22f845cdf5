"""The recipe record written next to shipped world weights: seed, steps, batch, wall time, machine, metrics."""
from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

RECORD_NAME = "training_record.json"


def machine_info() -> dict[str, Any]:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {"cpu": cpu, "logical_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "os": f"{platform.system()} {platform.release()}", "python": platform.python_version(),
            "torch": torch.__version__, "device": "cpu"}
    if torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name(0)
    return info


def write_record(out: str | Path, record: dict[str, Any]) -> Path:
    path = Path(out) / RECORD_NAME
    path.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return path
