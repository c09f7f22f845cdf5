"""The recipe record written next to shipped world weights: seed, steps, batch, wall time, machine, metrics."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RECORD_NAME = "training_record.json"


def write_record(out: str | Path, record: dict[str, Any]) -> Path:
    path = Path(out) / RECORD_NAME
    path.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return path
