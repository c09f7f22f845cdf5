"""Train one method on one task: ``python scripts/train.py --task compositional|t2i --method NAME --config FILE
[--set key=value ...] [--resume latest]``. With only ``--task`` it reads build_pairs' default output
(runs/pairs/laion-sg; t2i runs/pairs/pickapic) and writes runs/train/<task>-<method>. Multi-GPU / multi-node: ``accelerate launch --config_file
configs/accelerate/<ddp|zero2|zero3|fsdp>.yaml scripts/train.py ...``."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sgalign.jobs.train_cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
